//! A fixed pool of page-aligned buffers carved out of one anonymous mapping.
//!
//! The pool owns the memory; a [`BufLease`] is the only way to touch a slot, and dropping the
//! lease returns the slot. Because the whole pool is one contiguous region, an RDMA transport can
//! register it once and address every slot by `base + index * slot_bytes`. The number of slots
//! bounds how much data is in flight: a reader that finds the pool empty blocks (never spins)
//! until a writer or the network gives a slot back.
//!
//! This is one of the few files allowed `unsafe`: it maps memory and hands out slices into it.

use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::mm::{MapFlags, ProtFlags};

/// Slots are aligned (and sized) to this; O_DIRECT and RDMA both like page alignment.
pub const SLOT_ALIGN_BYTES: usize = 4096;
const HUGE_PAGE_BYTES: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "buffer pool of {slots} x {slot_bytes} bytes: slot size must be a non-zero multiple of {SLOT_ALIGN_BYTES} and the pool non-empty"
    )]
    Shape { slots: usize, slot_bytes: usize },
    #[error("mapping {bytes} bytes for the buffer pool failed")]
    Map { bytes: usize, source: std::io::Error },
    #[error("the buffer pool was closed")]
    Closed,
}

/// How the pool's memory was obtained (reported by `blit topo`/`--profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Explicit huge pages (MAP_HUGETLB).
    Huge,
    /// Normal pages with transparent huge pages requested.
    Transparent,
}

struct State {
    free: Vec<u32>,
    /// Slots `slots - parked .. slots` are not handed out yet (see [`BufferPool::new_parked`]).
    parked: u32,
    /// Someone found no free slot while some were parked (see [`BufferPool::wait_starved`]).
    starved: bool,
    /// [`BufferPool::release_starved_waiter`] was called: the next `wait_starved` returns at once.
    released: bool,
    closed: bool,
}

struct Inner {
    base: NonNull<u8>,
    region_bytes: usize,
    slot_bytes: usize,
    slots: usize,
    page_kind: PageKind,
    state: Mutex<State>,
    returned: Condvar,
    /// Signalled when `starved` is set or the pool is closed.
    starving: Condvar,
}

// SAFETY: `base` points to a private anonymous mapping owned by `Inner` for its whole life; the
// mapping is only read or written through a `BufLease`, and each slot index is held by at most one
// lease at a time (enforced by the free list under the mutex), so sharing `Inner` between threads
// cannot create aliasing mutable access.
unsafe impl Send for Inner {}
// SAFETY: see `Send` above; all shared mutable state besides slot memory is behind the mutex.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `base`/`region_bytes` are exactly what mmap returned, and no lease can outlive
        // `Inner` because every lease holds an `Arc<Inner>`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.region_bytes) };
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the free list inconsistent (every
        // critical section is a single push/pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pops a free slot; when there is none but some are parked, says so to `wait_starved`.
    fn pop(&self, st: &mut State) -> Option<u32> {
        let i = st.free.pop();
        if i.is_none() && st.parked > 0 && !st.starved {
            st.starved = true;
            self.starving.notify_all();
        }
        i
    }
}

/// A bounded pool of aligned buffers. Cloning shares the same pool.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("slots", &self.inner.slots)
            .field("slot_bytes", &self.inner.slot_bytes)
            .field("page_kind", &self.inner.page_kind)
            .finish()
    }
}

impl BufferPool {
    /// Maps `slots * slot_bytes` bytes. Explicit huge pages are tried first when
    /// `try_huge_pages` is set and the region is a multiple of 2 MiB; otherwise normal pages
    /// with transparent huge pages advised.
    pub fn new(slots: usize, slot_bytes: usize, try_huge_pages: bool) -> Result<Self, PoolError> {
        Self::new_parked(slots, slot_bytes, try_huge_pages, slots)
    }

    /// Like [`new`](Self::new), but only the first `available` slots can be leased until
    /// [`unpark`](Self::unpark) releases more (in index order). An RDMA transport registers a
    /// large pool piece by piece this way and lets readers start on the first piece.
    pub fn new_parked(
        slots: usize,
        slot_bytes: usize,
        try_huge_pages: bool,
        available: usize,
    ) -> Result<Self, PoolError> {
        if slots == 0
            || slot_bytes == 0
            || !slot_bytes.is_multiple_of(SLOT_ALIGN_BYTES)
            || slots > u32::MAX as usize
        {
            return Err(PoolError::Shape { slots, slot_bytes });
        }
        let region_bytes =
            slots.checked_mul(slot_bytes).ok_or(PoolError::Shape { slots, slot_bytes })?;
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        let mut mapped = None;
        if try_huge_pages && region_bytes % HUGE_PAGE_BYTES == 0 {
            // SAFETY: a fresh anonymous private mapping at an address the kernel picks; it aliases
            // nothing.
            let r = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    region_bytes,
                    prot,
                    MapFlags::PRIVATE | MapFlags::HUGETLB,
                )
            };
            if let Ok(p) = r {
                mapped = Some((p, PageKind::Huge));
            }
        }
        let (ptr, page_kind) = match mapped {
            Some(m) => m,
            None => {
                // SAFETY: as above.
                let p = unsafe {
                    rustix::mm::mmap_anonymous(
                        std::ptr::null_mut(),
                        region_bytes,
                        prot,
                        MapFlags::PRIVATE,
                    )
                }
                .map_err(|e| PoolError::Map { bytes: region_bytes, source: e.into() })?;
                // SAFETY: advising our own fresh mapping; failure only means no THP.
                let _ = unsafe {
                    rustix::mm::madvise(p, region_bytes, rustix::mm::Advice::LinuxHugepage)
                };
                (p, PageKind::Transparent)
            }
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(PoolError::Map {
            bytes: region_bytes,
            source: std::io::Error::other("mmap returned NULL"),
        })?;
        // NUMA: bind the fresh mapping to the placement's node before any page of it is
        // touched (or pinned by an RDMA registration), so pages are allocated there.
        // SAFETY: `base` is our live mapping of `region_bytes` bytes; no lease exists yet, and
        // `UnsafeCell` bytes permit the writes leases will make later, so this shared slice
        // (alive only for the call) asserts nothing the pool's users could break.
        let region = unsafe {
            std::slice::from_raw_parts(
                base.as_ptr().cast::<std::cell::UnsafeCell<u8>>().cast_const(),
                region_bytes,
            )
        };
        crate::placer::bind_new_region(region);
        let available = available.min(slots) as u32;
        // Hand out low indices first (LIFO keeps recently used slots warm in cache).
        let mut free = Vec::with_capacity(slots);
        free.extend((0..available).rev());
        let parked = slots as u32 - available;
        Ok(BufferPool {
            inner: Arc::new(Inner {
                base,
                region_bytes,
                slot_bytes,
                slots,
                page_kind,
                state: Mutex::new(State {
                    free,
                    parked,
                    starved: false,
                    released: false,
                    closed: false,
                }),
                returned: Condvar::new(),
                starving: Condvar::new(),
            }),
        })
    }

    pub fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }

    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    pub fn page_kind(&self) -> PageKind {
        self.inner.page_kind
    }

    /// Start address and length of the whole region, for memory registration.
    pub fn region(&self) -> (*mut u8, usize) {
        (self.inner.base.as_ptr(), self.inner.region_bytes)
    }

    /// Number of slots currently free.
    pub fn available(&self) -> usize {
        self.inner.lock().free.len()
    }

    /// Takes a slot, blocking until one is returned. Fails once the pool is closed.
    pub fn acquire(&self) -> Result<BufLease, PoolError> {
        let mut st = self.inner.lock();
        loop {
            if st.closed {
                return Err(PoolError::Closed);
            }
            if let Some(i) = self.inner.pop(&mut st) {
                return Ok(self.lease(i));
            }
            st = self.inner.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`acquire`](Self::acquire) but gives up after `timeout` (returns `Ok(None)`).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<BufLease>, PoolError> {
        let mut st = self.inner.lock();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if st.closed {
                return Err(PoolError::Closed);
            }
            if let Some(i) = self.inner.pop(&mut st) {
                return Ok(Some(self.lease(i)));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            st = self
                .inner
                .returned
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes a slot if one is free right now.
    pub fn try_acquire(&self) -> Option<BufLease> {
        let mut st = self.inner.lock();
        let i = self.inner.pop(&mut st)?;
        drop(st);
        Some(self.lease(i))
    }

    /// Wakes every blocked `acquire` with [`PoolError::Closed`]; used to cancel a pipeline.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.returned.notify_all();
        self.inner.starving.notify_all();
    }

    /// Waits until someone asks for a slot while none is free and some are still parked (then
    /// returns `true` and forgets that request), or until `timeout` (`false`). Lets a pool grow
    /// on demand: whoever owns the parked slots readies and [`unpark`](Self::unpark)s more only
    /// when they are wanted. Fails once the pool is closed.
    pub fn wait_starved(&self, timeout: Duration) -> Result<bool, PoolError> {
        let mut st = self.inner.lock();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if st.closed {
                return Err(PoolError::Closed);
            }
            if st.starved {
                st.starved = false;
                return Ok(true);
            }
            if st.released {
                st.released = false;
                return Ok(false);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            st = self
                .inner
                .starving
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Ends the current (or the next) [`wait_starved`](Self::wait_starved) at once with `false`,
    /// without closing the pool: for an owner that stops growing it and must not wait out the
    /// waiter's timeout.
    pub fn release_starved_waiter(&self) {
        self.inner.lock().released = true;
        self.inner.starving.notify_all();
    }

    /// Undoes [`close`](Self::close), for a pool that is kept for the next pipeline. Slots still
    /// leased come back as their leases drop, as always.
    pub fn reopen(&self) {
        self.inner.lock().closed = false;
    }

    /// Slots not released by [`unpark`](Self::unpark) yet.
    pub fn parked(&self) -> usize {
        self.inner.lock().parked as usize
    }

    /// Releases the next `n` parked slots (fewer if fewer are parked) and wakes waiters; returns
    /// the indices released, in order.
    pub fn unpark(&self, n: usize) -> std::ops::Range<u32> {
        let mut st = self.inner.lock();
        let n = (n.min(st.parked as usize)) as u32;
        let first = self.inner.slots as u32 - st.parked;
        st.parked -= n;
        st.starved = false;
        // Pushed highest first so that the lowest of them is handed out next.
        st.free.extend((first..first + n).rev());
        drop(st);
        self.inner.returned.notify_all();
        first..first + n
    }

    fn lease(&self, index: u32) -> BufLease {
        BufLease { inner: Arc::clone(&self.inner), index, len: 0 }
    }
}

/// Exclusive use of one slot of a [`BufferPool`] until dropped. `len` is how many bytes of the
/// slot hold data.
pub struct BufLease {
    inner: Arc<Inner>,
    index: u32,
    len: usize,
}

impl fmt::Debug for BufLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufLease").field("index", &self.index).field("len", &self.len).finish()
    }
}

impl BufLease {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn capacity(&self) -> usize {
        self.inner.slot_bytes
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks the first `len` bytes as data. Panics if `len` exceeds the slot: callers size their
    /// reads from `capacity()`, so a larger value is a logic error.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.inner.slot_bytes, "lease length {len} exceeds slot size");
        self.len = len;
    }

    /// Byte offset of this slot from the start of the pool's region.
    pub fn region_offset(&self) -> usize {
        self.index as usize * self.inner.slot_bytes
    }

    /// Address of the slot (for posting RDMA work requests).
    pub fn as_ptr(&self) -> *const u8 {
        self.inner.base.as_ptr().wrapping_add(self.region_offset())
    }

    /// The data part of the slot.
    pub fn data(&self) -> &[u8] {
        &self.full()[..self.len]
    }

    /// The whole slot, read-only.
    pub fn full(&self) -> &[u8] {
        // SAFETY: the slot lies inside the live mapping (index < slots), and this lease is its
        // only holder, so no mutable reference to it exists while `&self` is borrowed.
        unsafe {
            std::slice::from_raw_parts(
                self.inner.base.as_ptr().add(self.region_offset()),
                self.inner.slot_bytes,
            )
        }
    }

    /// The whole slot, writable (fill it, then `set_len`).
    pub fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `full`, and `&mut self` guarantees this is the only live borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.inner.base.as_ptr().add(self.region_offset()),
                self.inner.slot_bytes,
            )
        }
    }
}

impl Drop for BufLease {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.free.push(self.index);
        drop(st);
        self.inner.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_bounded_and_returned() {
        let pool = BufferPool::new(2, 4096, false).unwrap();
        let mut a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert!(pool.try_acquire().is_none());
        assert_ne!(a.index(), b.index());
        a.full_mut()[..5].copy_from_slice(b"hello");
        a.set_len(5);
        assert_eq!(a.data(), b"hello");
        assert_eq!(a.as_ptr() as usize % SLOT_ALIGN_BYTES, 0);
        drop(b);
        assert_eq!(pool.available(), 1);
        let c = pool.acquire_timeout(Duration::from_millis(10)).unwrap();
        assert!(c.is_some());
        assert!(pool.acquire_timeout(Duration::from_millis(10)).unwrap().is_none());
    }

    #[test]
    fn blocked_acquire_wakes_on_return_and_close() {
        let pool = BufferPool::new(1, 4096, false).unwrap();
        let held = pool.acquire().unwrap();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.acquire().map(|l| l.index()));
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert_eq!(t.join().unwrap().unwrap(), 0);

        let _held = pool.acquire().unwrap();
        let p3 = pool.clone();
        let t = std::thread::spawn(move || p3.acquire().is_err());
        std::thread::sleep(Duration::from_millis(20));
        pool.close();
        assert!(t.join().unwrap());
    }

    #[test]
    fn parked_slots_are_leased_only_once_released() {
        let pool = BufferPool::new_parked(4, 4096, false, 1).unwrap();
        assert_eq!((pool.available(), pool.parked()), (1, 3));
        let a = pool.acquire().unwrap();
        assert_eq!(a.index(), 0);
        assert!(pool.try_acquire().is_none());
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.acquire());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pool.unpark(2), 1..3);
        let b = t.join().unwrap().unwrap();
        assert_eq!(b.index(), 1);
        assert_eq!(pool.try_acquire().map(|l| l.index()), Some(2));
        assert_eq!(pool.unpark(5), 3..4);
        assert_eq!(pool.unpark(1), 4..4);
        assert_eq!((pool.available(), pool.parked()), (2, 0)); // slots 0 and 1 are leased
        drop((a, b));
        pool.close();
        assert!(pool.acquire().is_err());
        pool.reopen();
        assert!(pool.acquire().is_ok());
    }

    #[test]
    fn starved_is_signalled_only_while_slots_are_parked() {
        let pool = BufferPool::new_parked(3, 4096, false, 1).unwrap();
        assert!(!pool.wait_starved(Duration::from_millis(5)).unwrap());
        let _a = pool.acquire().unwrap();
        assert!(pool.try_acquire().is_none()); // empty with 2 parked: starved
        assert!(pool.wait_starved(Duration::ZERO).unwrap());
        assert!(!pool.wait_starved(Duration::ZERO).unwrap()); // forgotten once seen
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.acquire());
        assert!(pool.wait_starved(Duration::from_secs(10)).unwrap());
        pool.unpark(2);
        let _b = t.join().unwrap().unwrap();
        assert_eq!(_b.index(), 1);
        let _c = pool.acquire().unwrap();
        assert!(pool.try_acquire().is_none()); // empty, nothing parked: not starved
        assert!(!pool.wait_starved(Duration::from_millis(5)).unwrap());
        pool.close();
        pool.reopen();
        pool.release_starved_waiter();
        let t = std::time::Instant::now();
        assert!(!pool.wait_starved(Duration::from_secs(10)).unwrap()); // released: at once
        assert!(t.elapsed() < Duration::from_secs(5));
        pool.close();
        assert!(pool.wait_starved(Duration::from_secs(10)).is_err());
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(BufferPool::new(0, 4096, false).is_err());
        assert!(BufferPool::new(1, 1000, false).is_err());
    }
}
