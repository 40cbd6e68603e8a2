//! A core [`BufferPool`] registered with the NIC as one memory region.
//!
//! Owns the registration (an `ibv_mr` over the pool's whole mapping) and a
//! handle on the pool, in that drop order, so the region is deregistered
//! before this handle lets go of the mapping. It does not decide when the
//! device may touch a slot: the sender and receiver do that with their lease
//! bookkeeping, which is what the `register` contract below relies on.

use std::ptr::NonNull;
use std::sync::Arc;

use blitx_core::{BufLease, BufferPool};

use crate::error::{Error, Result};
use crate::pd_mr::{LocalSlice, MemoryRegion, ProtectionDomain, RemoteRegion};
use crate::types::Access;

/// A buffer pool and its registration.
#[derive(Debug)]
pub(crate) struct RegisteredPool {
    // Field order is drop order: deregister, then release the mapping.
    mr: MemoryRegion,
    pool: BufferPool,
}

impl RegisteredPool {
    /// Registers the whole region of `pool` with `access`.
    pub(crate) fn new(
        pd: &Arc<ProtectionDomain>,
        pool: BufferPool,
        access: Access,
    ) -> Result<Self> {
        let (base, len_bytes) = pool.region();
        let base = NonNull::new(base)
            .ok_or_else(|| Error::InvalidConfig { reason: "buffer pool has no mapping".into() })?;
        // SAFETY:
        // - the region is the pool's own anonymous mapping; `pool` (a handle on
        //   it) lives in this struct and is dropped only after `mr`, and every
        //   lease keeps the mapping alive too, so it stays mapped until the MR
        //   is deregistered;
        // - work requests that use it: the sender holds the lease of every
        //   slot a posted WRITE reads until that WRITE's completion was polled
        //   or its QP was destroyed (structural: the lease sits in the QP's
        //   in-flight queue, and readers only write slots they lease, so no
        //   Rust reference covers bytes the NIC reads while it may read them);
        // - the receiver advertises a slot to the peer only while it holds the
        //   slot's lease in its ring table, where no reference to the bytes is
        //   taken; it reads a slot only after the WRITE_WITH_IMM completion that
        //   filled it, and hands it to a writer only then. A peer that writes
        //   a slot it holds no credit for races with that reader: such a peer
        //   is outside the protocol (an authenticated session's own sender),
        //   the damage is limited to bytes of the pool, and the storage writer's
        //   checksum rejects the frame.
        let mr = unsafe { MemoryRegion::register(pd, base, len_bytes, access) }?;
        Ok(RegisteredPool { mr, pool })
    }

    /// The pool.
    pub(crate) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// True when `lease` is a slot of this pool (and not of another pool with
    /// the same geometry).
    pub(crate) fn owns(&self, lease: &BufLease) -> bool {
        let expected = self.mr.addr().wrapping_add(lease.region_offset() as u64);
        lease.as_ptr() as u64 == expected
            && lease.capacity() == self.pool.slot_bytes()
            && (lease.index() as usize) < self.pool.slots()
    }

    /// An SGE over `[offset, offset + len_bytes)` of the lease's slot.
    pub(crate) fn slice(
        &self,
        lease: &BufLease,
        offset: usize,
        len_bytes: usize,
    ) -> Result<LocalSlice> {
        if offset.checked_add(len_bytes).is_none_or(|end| end > lease.capacity()) {
            return Err(Error::OutOfBounds {
                what: "buffer lease",
                offset: offset as u64,
                len_bytes: len_bytes as u64,
                region_bytes: lease.capacity() as u64,
            });
        }
        self.mr.slice(lease.region_offset() + offset, len_bytes)
    }

    /// What a peer needs to write into the pool.
    pub(crate) fn remote(&self) -> RemoteRegion {
        self.mr.remote()
    }
}
