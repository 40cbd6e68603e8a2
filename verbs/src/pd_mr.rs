//! Protection domains, memory registration, and the types through which a
//! work request names memory.
//!
//! Owns `ibv_pd` and `ibv_mr`. Registered memory is always owned together
//! with its registration, so a registration can never outlive its memory:
//! [`OwnedRegion`] allocates its own (header rings, control buffers, tests),
//! and `pool_mr`'s [`RegisteredPool`](crate::RegisteredPool) registers a core
//! `BufferPool` it holds. [`MemoryRegion::register`] (the one `unsafe`
//! registration, with the lifetime contract) is private to this crate.
//!
//! A work request names local memory only through a [`LocalSlice`], which
//! only those two owners make (bounds-checked) and which holds a reference
//! count on the owner (memory and MR); a queue pair keeps that owner alive
//! until the QP is destroyed (see `queue_pair`), so no WR can name memory
//! that is not registered and mapped. Remote memory is a [`RemoteSlice`],
//! made only by bounds-checking against the peer's advertised
//! [`RemoteRegion`].

use std::alloc::{self, Layout};
use std::any::Any;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::device::Context;
use crate::error::{Error, Result};
use crate::sys::{self, ibv_mr, ibv_pd};
use crate::types::Access;

/// Alignment of [`OwnedRegion`] memory: one page, so registrations never share
/// a page with unrelated heap data.
pub const REGION_ALIGN_BYTES: usize = 4096;

/// A protection domain (`ibv_pd`). MRs and QPs keep it alive.
pub struct ProtectionDomain {
    raw: NonNull<ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: a PD is an opaque handle; verbs on it are thread-safe in rdma-core.
unsafe impl Send for ProtectionDomain {}
// SAFETY: see above.
unsafe impl Sync for ProtectionDomain {}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionDomain").field("device", &self.ctx.name()).finish_non_exhaustive()
    }
}

impl ProtectionDomain {
    /// `ibv_alloc_pd`.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Self>> {
        // SAFETY: the context is open for as long as `ctx` lives.
        let raw = unsafe { (ctx.verbs().alloc_pd)(ctx.as_ptr()) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::verbs("ibv_alloc_pd", io::Error::last_os_error()))?;
        Ok(Arc::new(ProtectionDomain { raw, ctx: Arc::clone(ctx) }))
    }

    /// The device this PD belongs to.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_pd {
        self.raw.as_ptr()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once; MRs and QPs hold an Arc to
        // this PD, so none of them is left.
        let rc = unsafe { (self.ctx.verbs().dealloc_pd)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(device = %self.ctx.name(), error = %sys::rc_error(rc), "ibv_dealloc_pd failed");
        }
    }
}

/// What a peer needs to RDMA WRITE into a region: address, rkey, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRegion {
    /// Virtual address of the first byte, in the owner's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len_bytes: u64,
    /// The rkey.
    pub rkey: u32,
}

impl RemoteRegion {
    /// A bounds-checked piece `[offset, offset + len_bytes)` of the region.
    pub fn slice(&self, offset: u64, len_bytes: u32) -> Result<RemoteSlice> {
        check_range("remote region", offset, u64::from(len_bytes), self.len_bytes)?;
        Ok(RemoteSlice { addr: self.addr + offset, len_bytes, rkey: self.rkey })
    }
}

/// A target range in a peer's memory for one RDMA WRITE. Only
/// [`RemoteRegion::slice`] makes these, so the range is inside what the peer
/// advertised (the peer's NIC checks the rkey and bounds again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSlice {
    addr: u64,
    len_bytes: u32,
    rkey: u32,
}

impl RemoteSlice {
    /// Remote virtual address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes (a WRITE's length is its local SGEs'; this bounds it).
    pub fn len_bytes(&self) -> u32 {
        self.len_bytes
    }

    /// The rkey.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }
}

/// What keeps a registration and the memory under it alive: the owner
/// ([`OwnedRegion`]'s memory + MR, or a registered pool's), shared by every
/// [`LocalSlice`] of it and by every QP that posted one.
pub(crate) type Keep = Arc<dyn Any + Send + Sync>;

/// A range of registered local memory, for one SGE: the registered-slot type
/// every posting function takes. Only the owners of registered memory make
/// these ([`OwnedRegion::slice`], `RegisteredPool::lease_slice`), bounds-checked,
/// and each holds its owner alive, so a slice always names memory that is
/// registered and mapped; posting it hands the owner to the QP, which keeps
/// it until the QP is destroyed.
#[derive(Clone)]
pub struct LocalSlice {
    addr: u64,
    len_bytes: u32,
    lkey: u32,
    keep: Keep,
}

impl std::fmt::Debug for LocalSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSlice")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len_bytes", &self.len_bytes)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .finish()
    }
}

impl PartialEq for LocalSlice {
    fn eq(&self, other: &Self) -> bool {
        (self.addr, self.len_bytes, self.lkey) == (other.addr, other.len_bytes, other.lkey)
    }
}

impl Eq for LocalSlice {}

impl LocalSlice {
    /// The owner this slice keeps alive (what a QP holds once it posted it).
    pub(crate) fn keep(&self) -> &Keep {
        &self.keep
    }

    /// Address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> u32 {
        self.len_bytes
    }

    /// The lkey of the registration.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }
}

fn check_range(what: &'static str, offset: u64, len_bytes: u64, region_bytes: u64) -> Result<()> {
    match offset.checked_add(len_bytes) {
        Some(end) if end <= region_bytes => Ok(()),
        _ => Err(Error::OutOfBounds { what, offset, len_bytes, region_bytes }),
    }
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit_bytes() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` into the valid out-pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if limit.rlim_cur == libc::RLIM_INFINITY { u64::MAX } else { limit.rlim_cur })
}

/// A registered memory region (`ibv_mr`) over memory it does not own.
pub struct MemoryRegion {
    raw: NonNull<ibv_mr>,
    pd: Arc<ProtectionDomain>,
    addr: u64,
    len_bytes: usize,
    lkey: u32,
    rkey: u32,
    access: Access,
}

// SAFETY: the MR handle is opaque and verbs on it are thread-safe; the memory
// it covers is governed by the `register` contract, not by this type.
unsafe impl Send for MemoryRegion {}
// SAFETY: see above; all accessors are reads of immutable fields.
unsafe impl Sync for MemoryRegion {}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len_bytes", &self.len_bytes)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("rkey", &format_args!("{:#x}", self.rkey))
            .finish()
    }
}

impl MemoryRegion {
    /// Registers `len_bytes` at `ptr` with the device (`ibv_reg_mr`).
    ///
    /// ENOMEM/EPERM under a finite RLIMIT_MEMLOCK become
    /// [`Error::MemlockTooLow`], which tells the user about `ulimit -l`.
    ///
    /// # Safety
    /// - `ptr..ptr + len_bytes` must be mapped, writable memory of this process
    ///   (if `access` includes any write right) that stays mapped until this
    ///   `MemoryRegion` is dropped **and** every work request that uses it
    ///   (locally through its lkey or remotely through its rkey) has completed
    ///   or been flushed.
    /// - While the device may access a byte (a posted WR covers it, or a peer
    ///   holds the rkey of a range it may write), Rust code must not hold a
    ///   reference to that byte: the device behaves like another thread. The
    ///   owner of the memory (the buffer pool) enforces this with its slot
    ///   states.
    pub(crate) unsafe fn register(
        pd: &Arc<ProtectionDomain>,
        ptr: NonNull<u8>,
        len_bytes: usize,
        access: Access,
    ) -> Result<Self> {
        if len_bytes == 0 {
            return Err(Error::InvalidConfig { reason: "cannot register 0 bytes".into() });
        }
        let verbs = pd.context().verbs();
        // SAFETY: the PD is live; the memory contract is forwarded from the
        // caller.
        let raw = unsafe { verbs.reg_mr(pd.as_ptr(), ptr.as_ptr().cast(), len_bytes, access) };
        let Some(raw) = NonNull::new(raw) else {
            let source = io::Error::last_os_error();
            return Err(reg_mr_error(len_bytes, source));
        };
        // SAFETY: ibv_reg_mr returned a valid ibv_mr; its keys are immutable.
        let (lkey, rkey) = unsafe { ((*raw.as_ptr()).lkey, (*raw.as_ptr()).rkey) };
        Ok(MemoryRegion {
            raw,
            pd: Arc::clone(pd),
            addr: ptr.as_ptr() as u64,
            len_bytes,
            lkey,
            rkey,
            access,
        })
    }

    /// Address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Registered length.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// Local key (for SGEs of this process's work requests).
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// Remote key (what a peer needs to WRITE/READ).
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// The access rights it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The PD it belongs to.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// What a peer needs to write into the whole region.
    pub fn remote(&self) -> RemoteRegion {
        RemoteRegion { addr: self.addr, len_bytes: self.len_bytes as u64, rkey: self.rkey }
    }

    /// A bounds-checked SGE over `[offset, offset + len_bytes)`, keeping
    /// `keep` (the owner of this MR and of its memory) alive.
    pub(crate) fn slice(&self, offset: usize, len_bytes: usize, keep: Keep) -> Result<LocalSlice> {
        check_range("local region", offset as u64, len_bytes as u64, self.len_bytes as u64)?;
        let len_bytes = u32::try_from(len_bytes).map_err(|_| Error::InvalidConfig {
            reason: format!("one SGE carries at most 4 GiB, not {len_bytes} bytes"),
        })?;
        Ok(LocalSlice { addr: self.addr + offset as u64, len_bytes, lkey: self.lkey, keep })
    }
}

fn reg_mr_error(len_bytes: usize, source: io::Error) -> Error {
    let errno = source.raw_os_error();
    if matches!(errno, Some(libc::ENOMEM) | Some(libc::EPERM))
        && let Ok(limit_bytes) = memlock_limit_bytes()
        && limit_bytes != u64::MAX
    {
        return Error::MemlockTooLow { requested_bytes: len_bytes as u64, limit_bytes, source };
    }
    Error::verbs("ibv_reg_mr", source)
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once; the PD is kept
        // alive by `self.pd` until after this.
        let rc = unsafe { (self.pd.context().verbs().dereg_mr)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %sys::rc_error(rc), "ibv_dereg_mr failed");
        }
    }
}

/// Page-aligned, zeroed heap memory freed on drop.
struct AlignedBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(len_bytes: usize) -> Result<Self> {
        let layout =
            Layout::from_size_align(len_bytes.max(1), REGION_ALIGN_BYTES).map_err(|e| {
                Error::InvalidConfig { reason: format!("buffer of {len_bytes} bytes: {e}") }
            })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            Error::verbs("alloc_zeroed", io::Error::from_raw_os_error(libc::ENOMEM))
        })?;
        Ok(AlignedBuffer { ptr, layout })
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Zeroed, page-aligned memory registered as one MR, owned by this value.
///
/// Contents are accessed by copying ([`OwnedRegion::write_at`],
/// [`OwnedRegion::read_at`]) rather than through long-lived slices, because the
/// device (or a peer holding the rkey) may write the memory at any time; the
/// caller's protocol decides when a range is stable (e.g. after its
/// completion was polled and before its slot is handed back).
pub struct OwnedRegion {
    /// Shared with every [`LocalSlice`] of it and every QP that posted one:
    /// the memory goes away only after the last of them.
    inner: Arc<OwnedInner>,
}

/// The registration and its memory.
struct OwnedInner {
    // Field order is drop order: deregister before the memory is freed.
    mr: MemoryRegion,
    mem: AlignedBuffer,
}

// SAFETY: the memory is only reached through `OwnedRegion`'s methods, which
// copy with raw pointers (writes need `&mut OwnedRegion`, of which there is
// one), and through the device; both are thread-agnostic.
unsafe impl Send for OwnedInner {}
// SAFETY: see above; `&OwnedInner` gives no access to the bytes.
unsafe impl Sync for OwnedInner {}

impl std::fmt::Debug for OwnedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedRegion").field("mr", &self.inner.mr).finish()
    }
}

impl OwnedRegion {
    /// Allocates `len_bytes` (page-aligned, zeroed) and registers it.
    pub fn new(pd: &Arc<ProtectionDomain>, len_bytes: usize, access: Access) -> Result<Self> {
        let mem = AlignedBuffer::new(len_bytes)?;
        // SAFETY: `mem` is mapped and writable for `len_bytes`; it is freed only
        // after `mr` is deregistered (field order), and after deregistration
        // the device can no longer reach it. No Rust reference to it ever
        // outlives a `read_at`/`write_at` call.
        let mr = unsafe { MemoryRegion::register(pd, mem.ptr, len_bytes, access) }?;
        Ok(OwnedRegion { inner: Arc::new(OwnedInner { mr, mem }) })
    }

    /// The registration (keys, address, what a peer needs).
    pub fn mr(&self) -> &MemoryRegion {
        &self.inner.mr
    }

    /// A bounds-checked SGE over `[offset, offset + len_bytes)` (it keeps the
    /// region alive).
    pub fn slice(&self, offset: usize, len_bytes: usize) -> Result<LocalSlice> {
        let keep: Keep = self.inner.clone();
        self.inner.mr.slice(offset, len_bytes, keep)
    }

    /// Copies `src` into the region at `offset`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        let inner = &self.inner;
        check_range("owned region", offset as u64, src.len() as u64, inner.mr.len_bytes as u64)?;
        // SAFETY: the range is inside the allocation (checked above) and does
        // not overlap `src`, which is a Rust slice elsewhere.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                inner.mem.ptr.as_ptr().add(offset),
                src.len(),
            )
        };
        Ok(())
    }

    /// Copies bytes at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let inner = &self.inner;
        check_range("owned region", offset as u64, dst.len() as u64, inner.mr.len_bytes as u64)?;
        // SAFETY: as in write_at.
        unsafe {
            std::ptr::copy_nonoverlapping(
                inner.mem.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_slices_are_bounds_checked() {
        let region = RemoteRegion { addr: 0x1000, len_bytes: 4096, rkey: 7 };
        let s = region.slice(1024, 1024).unwrap();
        assert_eq!((s.addr, s.len_bytes, s.rkey), (0x1400, 1024, 7));
        assert!(region.slice(4096, 0).is_ok());
        assert!(matches!(region.slice(4000, 100), Err(Error::OutOfBounds { .. })));
        assert!(matches!(region.slice(u64::MAX, 2), Err(Error::OutOfBounds { .. })));
    }

    #[test]
    fn remote_region_json_round_trip() {
        let region = RemoteRegion { addr: 0x7f00_0000_1000, len_bytes: 16 << 20, rkey: 0x1234 };
        let json = serde_json::to_string(&region).unwrap();
        assert_eq!(serde_json::from_str::<RemoteRegion>(&json).unwrap(), region);
    }

    #[test]
    fn memlock_limit_is_readable() {
        assert!(memlock_limit_bytes().unwrap() > 0);
    }

    #[test]
    fn reg_mr_errors_map_to_memlock_only_under_a_finite_limit() {
        let err = reg_mr_error(1 << 20, io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(err, Error::Verbs { op: "ibv_reg_mr", .. }));
        let limit = memlock_limit_bytes().unwrap();
        let err = reg_mr_error(1 << 20, io::Error::from_raw_os_error(libc::ENOMEM));
        if limit == u64::MAX {
            assert!(matches!(err, Error::Verbs { .. }));
        } else {
            assert!(
                matches!(err, Error::MemlockTooLow { limit_bytes, .. } if limit_bytes == limit)
            );
        }
    }
}
