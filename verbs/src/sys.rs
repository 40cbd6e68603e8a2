//! The FFI boundary: `libibverbs.so.1` loaded at runtime, plus the verbs that
//! `<infiniband/verbs.h>` defines as `static inline` calls through `ctx->ops`.
//!
//! This module owns every function pointer into libibverbs. It must not hold
//! any verbs object (those live in `device`, `pd_mr`, `cq` and `queue_pair`).
//!
//! Why dlopen: the `blit` binary has to start, and work over TCP, on a machine
//! that has no libibverbs installed. No exported libibverbs symbol is referenced
//! at link time (only `rdma-sys`'s type definitions are used), so the linker's
//! `--as-needed` drops libibverbs from `DT_NEEDED`; the test
//! `tests/no_libibverbs_needed.rs` keeps it that way.
//!
//! `rdma-sys`'s own inline helpers are deliberately *not* called: some of them
//! (`___ibv_query_port`, `__ibv_reg_mr`) reference exported symbols in their
//! fallback branches and others `unwrap()` a missing op. The few shims below do
//! the same as the C header, with typed failure instead of a panic.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::io;
use std::mem;
use std::sync::OnceLock;

use libloading::Library;
pub(crate) use rdma_sys::{
    ibv_comp_channel, ibv_context, ibv_cq, ibv_device, ibv_device_attr, ibv_gid, ibv_gid_entry,
    ibv_mr, ibv_pd, ibv_port_attr, ibv_qp, ibv_qp_attr, ibv_qp_init_attr, ibv_recv_wr, ibv_send_wr,
    ibv_sge, ibv_wc, verbs_context,
};

use crate::error::Error;
use crate::types::Access;

/// The soname that is loaded; the `-dev` symlink `libibverbs.so` is not needed.
pub(crate) const LIBIBVERBS: &str = "libibverbs.so.1";
/// Overrides the library path (tests use it to provoke `LibraryMissing`).
pub const LIBRARY_ENV: &str = "BLIT_RDMA_LIBIBVERBS";

// `Access` mirrors `ibv_access_flags`; a mismatch would silently grant the
// wrong rights, so it is checked at compile time.
const _: () = {
    use rdma_sys::ibv_access_flags as f;
    assert!(Access::LOCAL_WRITE.bits() == f::IBV_ACCESS_LOCAL_WRITE.0);
    assert!(Access::REMOTE_WRITE.bits() == f::IBV_ACCESS_REMOTE_WRITE.0);
    assert!(Access::REMOTE_READ.bits() == f::IBV_ACCESS_REMOTE_READ.0);
    assert!(Access::REMOTE_ATOMIC.bits() == f::IBV_ACCESS_REMOTE_ATOMIC.0);
};

type GetDeviceList = unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device;
type FreeDeviceList = unsafe extern "C" fn(*mut *mut ibv_device);
type GetDeviceName = unsafe extern "C" fn(*mut ibv_device) -> *const c_char;
type OpenDevice = unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context;
type CloseDevice = unsafe extern "C" fn(*mut ibv_context) -> c_int;
type QueryDevice = unsafe extern "C" fn(*mut ibv_context, *mut ibv_device_attr) -> c_int;
/// The exported, versioned `ibv_query_port@@IBVERBS_1.1`; it takes the smaller
/// `_compat_ibv_port_attr`, a prefix of `ibv_port_attr`.
type QueryPortCompat = unsafe extern "C" fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int;
type QueryGid = unsafe extern "C" fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int;
type QueryGidTable =
    unsafe extern "C" fn(*mut ibv_context, *mut ibv_gid_entry, usize, u32, usize) -> isize;
type AllocPd = unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd;
type DeallocPd = unsafe extern "C" fn(*mut ibv_pd) -> c_int;
type RegMrIova2 = unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, u64, c_uint) -> *mut ibv_mr;
type RegMrLegacy = unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr;
type DeregMr = unsafe extern "C" fn(*mut ibv_mr) -> c_int;
type CreateCompChannel = unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_comp_channel;
type DestroyCompChannel = unsafe extern "C" fn(*mut ibv_comp_channel) -> c_int;
type CreateCq = unsafe extern "C" fn(
    *mut ibv_context,
    c_int,
    *mut c_void,
    *mut ibv_comp_channel,
    c_int,
) -> *mut ibv_cq;
type DestroyCq = unsafe extern "C" fn(*mut ibv_cq) -> c_int;
type GetCqEvent =
    unsafe extern "C" fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int;
type AckCqEvents = unsafe extern "C" fn(*mut ibv_cq, c_uint);
type CreateQp = unsafe extern "C" fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp;
type ModifyQp = unsafe extern "C" fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int;
type DestroyQp = unsafe extern "C" fn(*mut ibv_qp) -> c_int;
type WcStatusStr = unsafe extern "C" fn(c_uint) -> *const c_char;

/// `ibv_reg_mr` is a macro in recent headers; prefer the function it expands
/// to (`ibv_reg_mr_iova2`, IBVERBS_1.8) and fall back to the old export.
#[derive(Clone, Copy)]
pub(crate) enum RegMr {
    Iova2(RegMrIova2),
    Legacy(RegMrLegacy),
}

/// Resolved libibverbs entry points. Every pointer stays valid for as long as
/// `_library` is loaded; the table lives in a `static` and is never dropped.
pub(crate) struct Verbs {
    pub(crate) get_device_list: GetDeviceList,
    pub(crate) free_device_list: FreeDeviceList,
    pub(crate) get_device_name: GetDeviceName,
    pub(crate) open_device: OpenDevice,
    pub(crate) close_device: CloseDevice,
    pub(crate) query_device: QueryDevice,
    pub(crate) query_port_compat: QueryPortCompat,
    pub(crate) query_gid: QueryGid,
    pub(crate) query_gid_table: Option<QueryGidTable>,
    pub(crate) alloc_pd: AllocPd,
    pub(crate) dealloc_pd: DeallocPd,
    pub(crate) reg_mr: RegMr,
    pub(crate) dereg_mr: DeregMr,
    pub(crate) create_comp_channel: CreateCompChannel,
    pub(crate) destroy_comp_channel: DestroyCompChannel,
    pub(crate) create_cq: CreateCq,
    pub(crate) destroy_cq: DestroyCq,
    pub(crate) get_cq_event: GetCqEvent,
    pub(crate) ack_cq_events: AckCqEvents,
    pub(crate) create_qp: CreateQp,
    pub(crate) modify_qp: ModifyQp,
    pub(crate) destroy_qp: DestroyQp,
    pub(crate) wc_status_str: WcStatusStr,
    _library: Library,
}

/// Why loading failed; kept (cloneable) in the static so every later call
/// reports the same typed error.
#[derive(Clone, Debug)]
enum LoadFailure {
    Library { library: String, detail: String },
    Symbol { library: String, symbol: &'static str },
}

impl LoadFailure {
    fn to_error(&self) -> Error {
        match self {
            Self::Library { library, detail } => {
                Error::LibraryMissing { library: library.clone(), detail: detail.clone() }
            }
            Self::Symbol { library, symbol } => {
                Error::SymbolMissing { library: library.clone(), symbol }
            }
        }
    }
}

static VERBS: OnceLock<Result<Verbs, LoadFailure>> = OnceLock::new();

/// The process-wide libibverbs table, loaded on first use.
pub(crate) fn verbs() -> Result<&'static Verbs, Error> {
    let library = std::env::var(LIBRARY_ENV).unwrap_or_else(|_| LIBIBVERBS.to_owned());
    VERBS.get_or_init(|| load(&library)).as_ref().map_err(LoadFailure::to_error)
}

/// Loads `library` without caching (tests use it with a missing name).
#[cfg(test)]
fn load_uncached(library: &str) -> Result<(), Error> {
    load(library).map(drop).map_err(|failure| failure.to_error())
}

fn load(library: &str) -> Result<Verbs, LoadFailure> {
    // SAFETY: loading libibverbs runs its ELF constructors, which only set up
    // internal state (provider search paths, fork-safety defaults); nothing in
    // this process depends on the order of those initialisers.
    let lib = unsafe { Library::new(library) }
        .map_err(|e| LoadFailure::Library { library: library.to_owned(), detail: e.to_string() })?;
    let need = |symbol: &'static str| LoadFailure::Symbol { library: library.to_owned(), symbol };

    macro_rules! required {
        ($name:literal, $ty:ty) => {
            // SAFETY: `$ty` is the C prototype of `$name` in rdma-core's
            // <infiniband/verbs.h> (v44 on bookworm, unchanged since v17);
            // the pointer is copied out and used only while `lib` is alive.
            unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }
                .map(|symbol| *symbol)
                .map_err(|_| need($name))?
        };
    }
    macro_rules! optional {
        ($name:literal, $ty:ty) => {
            // SAFETY: as for `required!`.
            unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }.ok().map(|symbol| *symbol)
        };
    }

    let reg_mr = match optional!("ibv_reg_mr_iova2", RegMrIova2) {
        Some(f) => RegMr::Iova2(f),
        None => RegMr::Legacy(required!("ibv_reg_mr", RegMrLegacy)),
    };
    Ok(Verbs {
        get_device_list: required!("ibv_get_device_list", GetDeviceList),
        free_device_list: required!("ibv_free_device_list", FreeDeviceList),
        get_device_name: required!("ibv_get_device_name", GetDeviceName),
        open_device: required!("ibv_open_device", OpenDevice),
        close_device: required!("ibv_close_device", CloseDevice),
        query_device: required!("ibv_query_device", QueryDevice),
        query_port_compat: required!("ibv_query_port", QueryPortCompat),
        query_gid: required!("ibv_query_gid", QueryGid),
        query_gid_table: optional!("_ibv_query_gid_table", QueryGidTable),
        alloc_pd: required!("ibv_alloc_pd", AllocPd),
        dealloc_pd: required!("ibv_dealloc_pd", DeallocPd),
        reg_mr,
        dereg_mr: required!("ibv_dereg_mr", DeregMr),
        create_comp_channel: required!("ibv_create_comp_channel", CreateCompChannel),
        destroy_comp_channel: required!("ibv_destroy_comp_channel", DestroyCompChannel),
        create_cq: required!("ibv_create_cq", CreateCq),
        destroy_cq: required!("ibv_destroy_cq", DestroyCq),
        get_cq_event: required!("ibv_get_cq_event", GetCqEvent),
        ack_cq_events: required!("ibv_ack_cq_events", AckCqEvents),
        create_qp: required!("ibv_create_qp", CreateQp),
        modify_qp: required!("ibv_modify_qp", ModifyQp),
        destroy_qp: required!("ibv_destroy_qp", DestroyQp),
        wc_status_str: required!("ibv_wc_status_str", WcStatusStr),
        _library: lib,
    })
}

impl Verbs {
    /// `ibv_wc_status_str`, copied into an owned string.
    pub(crate) fn wc_status_text(&self, status: u32) -> String {
        // SAFETY: ibv_wc_status_str accepts any value (unknown ones map to
        // "unknown") and returns a pointer to a static NUL-terminated string.
        let text = unsafe { (self.wc_status_str)(status) };
        if text.is_null() {
            return format!("status {status}");
        }
        // SAFETY: non-null, NUL-terminated and static (see above).
        unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
    }

    /// `ibv_reg_mr(pd, addr, len, access)` through whichever export exists.
    ///
    /// # Safety
    /// `pd` must be a live protection domain of this library, and
    /// `addr..addr+len` must be mapped memory of this process.
    pub(crate) unsafe fn reg_mr(
        &self,
        pd: *mut ibv_pd,
        addr: *mut c_void,
        len: usize,
        access: Access,
    ) -> *mut ibv_mr {
        match self.reg_mr {
            // SAFETY: forwarded from the caller; iova == addr is what the
            // `ibv_reg_mr` macro passes.
            RegMr::Iova2(f) => unsafe { f(pd, addr, len, addr as u64, access.bits()) },
            // SAFETY: as above. The access bits are all < 2^31.
            RegMr::Legacy(f) => unsafe { f(pd, addr, len, access.bits() as c_int) },
        }
    }
}

/// Turns a verbs status return into an `io::Error`. rdma-core returns the
/// errno value itself for most calls, a few return -1 and set errno.
pub(crate) fn rc_error(rc: c_int) -> io::Error {
    if rc > 0 {
        io::Error::from_raw_os_error(rc)
    } else if rc < 0 && rc != -1 {
        io::Error::from_raw_os_error(-rc)
    } else {
        io::Error::last_os_error()
    }
}

/// `verbs_get_ctx()` from verbs.h: the extended context around `ctx`, if the
/// provider uses one (all current providers do).
///
/// # Safety
/// `ctx` must point to a live, opened `ibv_context`.
unsafe fn verbs_get_ctx(ctx: *mut ibv_context) -> Option<*mut verbs_context> {
    // `__VERBS_ABI_IS_EXTENDED` is `(void *)UINT_MAX`.
    // SAFETY: the caller guarantees `ctx` is valid for reads.
    let marker = unsafe { (*ctx).abi_compat } as usize;
    if marker != u32::MAX as usize {
        return None;
    }
    let offset = mem::offset_of!(verbs_context, context);
    // SAFETY: when the marker is set, `ctx` is the `context` member embedded
    // at the end of a `verbs_context` (container_of in C).
    Some(unsafe { ctx.cast::<u8>().sub(offset) }.cast::<verbs_context>())
}

/// `ibv_query_port()` as the header's `___ibv_query_port` does it: the sized
/// extended op when the library is new enough, else the compat export.
///
/// # Safety
/// `ctx` must be a live context opened through `verbs`.
pub(crate) unsafe fn query_port(
    verbs: &Verbs,
    ctx: *mut ibv_context,
    port_num: u8,
    attr: &mut ibv_port_attr,
) -> c_int {
    // SAFETY: forwarded from the caller.
    if let Some(vctx) = unsafe { verbs_get_ctx(ctx) } {
        let needed = mem::size_of::<verbs_context>() - mem::offset_of!(verbs_context, query_port);
        // SAFETY: `vctx` is valid (see verbs_get_ctx); `sz` says how much of
        // the struct (counted from its end) this library version filled in.
        let (size, op) = unsafe { ((*vctx).sz, (*vctx).query_port) };
        if size >= needed
            && let Some(op) = op
        {
            // SAFETY: the provider's query_port writes at most
            // `size_of::<ibv_port_attr>()` bytes into `attr`.
            return unsafe { op(ctx, port_num, attr, mem::size_of::<ibv_port_attr>()) };
        }
    }
    // SAFETY: the compat struct is a prefix of `ibv_port_attr`, so the export
    // writes inside `attr`; the rest stays as the caller initialised it.
    unsafe { (verbs.query_port_compat)(ctx, port_num, attr) }
}

/// `ibv_post_send()`: an inline call through `ctx->ops`.
///
/// # Safety
/// `qp` must be a live QP; `wr` a valid chain whose SGEs point into memory
/// registered with an MR of the QP's PD (or inline data valid for the call).
pub(crate) unsafe fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: &mut *mut ibv_send_wr,
) -> c_int {
    // SAFETY: `qp` and its context are live (caller); ops are set by the
    // provider at open time and never change.
    match unsafe { (*(*qp).context).ops.post_send } {
        // SAFETY: forwarded from the caller.
        Some(op) => unsafe { op(qp, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_recv()`: an inline call through `ctx->ops`.
///
/// # Safety
/// As for [`post_send`].
pub(crate) unsafe fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: &mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: see post_send.
    match unsafe { (*(*qp).context).ops.post_recv } {
        // SAFETY: forwarded from the caller.
        Some(op) => unsafe { op(qp, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_poll_cq()`: an inline call through `ctx->ops`. Returns the number of
/// completions written, or a negative value on error.
///
/// # Safety
/// `cq` must be a live CQ and `wc` valid for `entries` writes.
pub(crate) unsafe fn poll_cq(cq: *mut ibv_cq, entries: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: see post_send.
    match unsafe { (*(*cq).context).ops.poll_cq } {
        // SAFETY: forwarded from the caller.
        Some(op) => unsafe { op(cq, entries, wc) },
        None => -libc::EOPNOTSUPP,
    }
}

/// `ibv_req_notify_cq()`: an inline call through `ctx->ops`.
///
/// # Safety
/// `cq` must be a live CQ.
pub(crate) unsafe fn req_notify_cq(cq: *mut ibv_cq, solicited_only: bool) -> c_int {
    // SAFETY: see post_send.
    match unsafe { (*(*cq).context).ops.req_notify_cq } {
        // SAFETY: forwarded from the caller.
        Some(op) => unsafe { op(cq, c_int::from(solicited_only)) },
        None => libc::EOPNOTSUPP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_typed_error() {
        let err = load_uncached("libibverbs-not-installed.so.1").unwrap_err();
        assert!(matches!(err, Error::LibraryMissing { .. }), "{err:?}");
        assert!(err.is_unavailable());
    }

    #[test]
    fn rc_error_understands_both_conventions() {
        assert_eq!(rc_error(libc::EINVAL).raw_os_error(), Some(libc::EINVAL));
        assert_eq!(rc_error(-libc::ENOMEM).raw_os_error(), Some(libc::ENOMEM));
    }
}
