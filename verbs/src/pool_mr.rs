//! A core [`BufferPool`] registered with the NIC, whole or piece by piece.
//!
//! Owns the registrations (`ibv_mr`s over consecutive groups of the pool's
//! slots) and a handle on the pool, in that drop order, so every region is
//! deregistered before this handle lets go of the mapping.
//!
//! The device reaches a slot in two ways, and both are bounded here:
//! - a local WR (the sender's WRITE of a filled slot) names the slot only
//!   through [`RegisteredPool::post_lease`], which takes the lease by value
//!   and gives back a [`PostedLease`]: no access to the bytes remains, and
//!   the slot goes back to the pool only when the `PostedLease` is dropped
//!   (the sender drops it after the WR's completion was polled, or after its
//!   QP was destroyed). The slice it hands out keeps the pool's mapping and
//!   registrations alive, and the QP that posts it holds them until it is
//!   destroyed;
//! - a peer writes a slot through the rkey of a pool registered whole
//!   ([`RegisteredPool::remote`]); which slots it may write is the
//!   receiver's credit protocol (the boundary is in `register_group`'s
//!   SAFETY comment and docs/rdma.md).
//!
//! Registering pins the pages, and the kernel clears every fresh page it
//! pins: the cost grows with the pool, not with the transfer (~4 ms per MiB
//! under the Soft-RoCE lab's emulation, well under 1 ms per MiB on a real
//! server). Two things keep it off a session's critical path:
//! - [`RegisteredPool::growing`] registers the first group of slots at once
//!   and the rest on a background thread, on demand (when a reader finds the
//!   pool empty); a slot is leasable only once its group is registered (it
//!   stays parked in the pool until then), so readers start on the first
//!   group, and a pool that is never drained is never registered whole;
//! - a pool registered for one session can go back to its [`Domain`]
//!   when the session ends (`recycle_into`), and the next session with the
//!   same shape takes it instead of registering anew.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use blitx_core::{BufLease, BufferPool};

use crate::domain::{Domain, PoolKey};
use crate::error::{Error, Result};
use crate::pd_mr::{Keep, LocalSlice, MemoryRegion, ProtectionDomain, RemoteRegion};
use crate::types::Access;

/// The registrations of one pool.
#[derive(Debug)]
pub(crate) struct Regs {
    // Field order is drop order: deregister every group, then release the
    // mapping (leases also hold it).
    /// Groups 1.. (registered by the background thread of a growing pool).
    rest: Vec<OnceLock<MemoryRegion>>,
    /// Group 0 (registered before the pool is handed out).
    first: MemoryRegion,
    pool: BufferPool,
    /// Slots per group (the last group may have fewer).
    group_slots: usize,
    key: PoolKey,
    /// Asks the background registration to stop early (the pool is dropped).
    stop: AtomicBool,
}

impl Regs {
    fn group_of(&self, slot: usize) -> Option<&MemoryRegion> {
        match slot / self.group_slots {
            0 => Some(&self.first),
            g => self.rest.get(g - 1).and_then(OnceLock::get),
        }
    }

    /// Every slot is registered (a pool that may go back to its domain).
    pub(crate) fn complete(&self) -> bool {
        self.rest.iter().all(|g| g.get().is_some())
    }

    pub(crate) fn key(&self) -> PoolKey {
        self.key
    }

    /// The pool, reopened for its next session.
    pub(crate) fn reopen(&self) {
        self.pool.reopen();
    }
}

/// Registers slots `first_slot .. first_slot + slots` of `pool`.
fn register_group(
    pd: &Arc<ProtectionDomain>,
    pool: &BufferPool,
    first_slot: usize,
    slots: usize,
    access: Access,
) -> Result<MemoryRegion> {
    let (base, len_bytes) = pool.region();
    let offset = first_slot * pool.slot_bytes();
    let group_bytes = slots * pool.slot_bytes();
    if base.is_null() || offset + group_bytes > len_bytes || group_bytes == 0 {
        return Err(Error::InvalidConfig {
            reason: "buffer pool group outside its mapping".into(),
        });
    }
    let ptr = NonNull::new(base.wrapping_add(offset))
        .ok_or_else(|| Error::InvalidConfig { reason: "buffer pool has no mapping".into() })?;
    // SAFETY:
    // - the range is inside the pool's own anonymous mapping (checked above);
    //   the `Regs` that holds this MR also holds a handle on the pool and
    //   drops the MR first, and every lease keeps the mapping alive too, so it
    //   stays mapped until the MR is deregistered;
    // - no slot of the group is leased yet when it is registered: a growing
    //   pool keeps a group's slots parked until this returns, and a whole pool
    //   is registered before anyone can lease from it;
    // - work requests that use it: a local WR can name a slot only through
    //   `post_lease`, which takes the slot's lease (readers only write slots
    //   they lease, so no Rust reference covers bytes the NIC may read) and
    //   whose slice keeps these `Regs` alive; the QP that posts it holds them
    //   until it is destroyed, so the MR and mapping outlive every WR. The
    //   slot is leased again only after its `PostedLease` is dropped, which
    //   the sender does after the WR's completion was polled or the QP was
    //   destroyed;
    // - the receiver advertises a slot to the peer only while it holds the
    //   slot's lease in its ring table, where no reference to the bytes is
    //   taken; it reads a slot only after the WRITE_WITH_IMM completion that
    //   filled it, and hands it to a writer only then. A peer that writes a
    //   slot it holds no credit for races with that reader: such a peer is
    //   outside the protocol (an authenticated session's own sender), the
    //   damage is limited to bytes of the pool, and the storage writer's
    //   checksum rejects the frame;
    // - a pool kept by its domain between sessions is registered in the
    //   domain's PD; the QPs of the session that used it were destroyed
    //   before it was given back (field order of the sender and receiver),
    //   so no peer of an earlier session can reach it.
    unsafe { MemoryRegion::register(pd, ptr, group_bytes, access) }
}

/// A slot of a [`RegisteredPool`] handed over for posting: the lease (so the
/// slot is not reused) without any access to its bytes, and the SGE over its
/// filled part. Drop it once the WR that reads it completed (or its QP was
/// destroyed): the slot then goes back to the pool.
#[derive(Debug)]
pub struct PostedLease {
    sge: LocalSlice,
    // never read: holding it keeps the slot out of the pool
    _lease: BufLease,
}

impl PostedLease {
    /// The SGE over `[0, len)` of the slot, `len` being the lease's length
    /// when it was posted.
    pub fn slice(&self) -> &LocalSlice {
        &self.sge
    }
}

/// A buffer pool and its registration(s). Dropping it stops a background
/// registration, then either deregisters or hands the pool back to its domain.
#[derive(Debug)]
pub struct RegisteredPool {
    regs: Option<Arc<Regs>>,
    registrar: Option<JoinHandle<()>>,
    /// The domain that keeps the pool for the next session (`None`: deregister on drop).
    home: Option<Domain>,
    /// Kept from an earlier session (nothing was registered for this one).
    reused: bool,
}

impl RegisteredPool {
    /// Maps and registers a pool of `slots` × `slot_bytes`, whole, before returning.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        slots: usize,
        slot_bytes: usize,
        access: Access,
        home: Option<Domain>,
        what: &'static str,
    ) -> Result<Self> {
        let pool = BufferPool::new_parked(slots, slot_bytes, true, 0)
            .map_err(|source| Error::Pool { what, source })?;
        let first = register_group(pd, &pool, 0, slots, access)?;
        pool.unpark(slots);
        let key = PoolKey { slots, slot_bytes, access };
        let regs =
            Regs { rest: Vec::new(), first, pool, group_slots: slots, key, stop: false.into() };
        Ok(RegisteredPool { regs: Some(Arc::new(regs)), registrar: None, home, reused: false })
    }

    /// Maps a pool of `slots` × `slot_bytes`, registers its first
    /// `group_slots` slots now and the other groups on a background thread,
    /// one group each time a caller finds the pool empty; each group's slots
    /// become leasable as it is registered. A group that
    /// cannot be registered (memlock limit) ends the registration with a
    /// warning: the pool then works with the slots it has.
    pub fn growing(
        pd: &Arc<ProtectionDomain>,
        slots: usize,
        slot_bytes: usize,
        group_slots: usize,
        access: Access,
        home: Option<Domain>,
        what: &'static str,
    ) -> Result<Self> {
        let group_slots = group_slots.clamp(1, slots.max(1));
        if group_slots >= slots {
            return Self::new(pd, slots, slot_bytes, access, home, what);
        }
        let pool = BufferPool::new_parked(slots, slot_bytes, true, 0)
            .map_err(|source| Error::Pool { what, source })?;
        let first = register_group(pd, &pool, 0, group_slots, access)?;
        pool.unpark(group_slots);
        let groups = slots.div_ceil(group_slots);
        let key = PoolKey { slots, slot_bytes, access };
        let regs = Arc::new(Regs {
            rest: (1..groups).map(|_| OnceLock::new()).collect(),
            first,
            pool,
            group_slots,
            key,
            stop: false.into(),
        });
        let registrar = {
            let (regs, pd) = (Arc::clone(&regs), Arc::clone(pd));
            std::thread::Builder::new()
                .name("rdma-register".into())
                .spawn(move || register_rest(&regs, &pd, access, what))
                .map_err(|e| Error::verbs("spawn the memory registration thread", e))?
        };
        Ok(RegisteredPool { regs: Some(regs), registrar: Some(registrar), home, reused: false })
    }

    /// A pool a domain kept from an earlier session.
    pub(crate) fn reused(regs: Arc<Regs>, home: Domain) -> Self {
        RegisteredPool { regs: Some(regs), registrar: None, home: Some(home), reused: true }
    }

    fn regs(&self) -> &Regs {
        // Invariant: `regs` is `Some` until `drop` takes it.
        self.regs.as_deref().expect("registered pool used after drop")
    }

    /// The pool.
    pub fn pool(&self) -> &BufferPool {
        &self.regs().pool
    }

    /// Bytes registered so far.
    pub fn registered_bytes(&self) -> u64 {
        let r = self.regs();
        let groups = 1 + r.rest.iter().filter(|g| g.get().is_some()).count();
        let slots = (groups * r.group_slots).min(r.pool.slots());
        (slots * r.pool.slot_bytes()) as u64
    }

    /// Bytes registered for this session (0 for a pool kept from an earlier one).
    pub fn registered_here_bytes(&self) -> u64 {
        if self.reused { 0 } else { self.registered_bytes() }
    }

    /// True when `lease` is a slot of this pool (and not of another pool with
    /// the same geometry).
    pub fn owns(&self, lease: &BufLease) -> bool {
        let pool = self.pool();
        let expected = pool.region().0.wrapping_add(lease.region_offset());
        std::ptr::eq(lease.as_ptr(), expected)
            && lease.capacity() == pool.slot_bytes()
            && (lease.index() as usize) < pool.slots()
    }

    /// Hands a filled lease of this pool over for posting: the returned
    /// [`PostedLease`] carries the SGE over its `len()` bytes and keeps the
    /// slot out of the pool until it is dropped. A lease of another pool is
    /// refused ([`RegisteredPool::owns`]), and so is a slot whose group is
    /// not registered yet.
    pub fn post_lease(&self, lease: BufLease) -> Result<PostedLease> {
        if !self.owns(&lease) {
            return Err(Error::InvalidConfig {
                reason: "a lease of another buffer pool cannot be posted from this one".into(),
            });
        }
        let len_bytes = lease.len();
        if len_bytes > lease.capacity() {
            return Err(Error::OutOfBounds {
                what: "buffer lease",
                offset: 0,
                len_bytes: len_bytes as u64,
                region_bytes: lease.capacity() as u64,
            });
        }
        let regs = self.regs.as_ref().ok_or_else(|| Error::InvalidConfig {
            reason: "registered pool used after drop".into(),
        })?;
        let slot = lease.index() as usize;
        let mr = regs.group_of(slot).ok_or_else(|| Error::InvalidConfig {
            reason: format!("slot {slot} of the pool is not registered"),
        })?;
        let group_start = slot / regs.group_slots * regs.group_slots;
        let keep: Keep = regs.clone();
        let sge = mr.slice((slot - group_start) * regs.pool.slot_bytes(), len_bytes, keep)?;
        Ok(PostedLease { sge, _lease: lease })
    }

    /// What a peer needs to write into the pool. Only for a pool registered
    /// whole ([`RegisteredPool::new`], or a kept one), which the receiver's
    /// ring always is: it is one region, so one address and rkey cover it.
    pub fn remote(&self) -> Result<RemoteRegion> {
        let r = self.regs();
        if !r.rest.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "a pool registered in groups has no single remote region".into(),
            });
        }
        Ok(r.first.remote())
    }
}

/// How often the background registration looks at its `stop` flag on its own; a
/// dropped pool also wakes it at once (`release_starved_waiter`).
const REGISTRAR_POLL: Duration = Duration::from_millis(100);

/// The background half of [`RegisteredPool::growing`]: registers the next group
/// whenever someone found the pool empty, so a pool that the NIC drains as fast
/// as readers fill it stays small (a 256 MiB push over rxe uses 4–6 of 24 slots).
fn register_rest(regs: &Regs, pd: &Arc<ProtectionDomain>, access: Access, what: &'static str) {
    let slots = regs.pool.slots();
    for (i, cell) in regs.rest.iter().enumerate() {
        loop {
            if regs.stop.load(Ordering::Acquire) {
                return;
            }
            match regs.pool.wait_starved(REGISTRAR_POLL) {
                Ok(true) => break,
                Ok(false) => continue,
                Err(_) => return, // closed: the session is over
            }
        }
        let first_slot = (i + 1) * regs.group_slots;
        let n = regs.group_slots.min(slots - first_slot);
        match register_group(pd, &regs.pool, first_slot, n, access) {
            Ok(mr) => {
                // Only this thread sets the cells, each once.
                let _ = cell.set(mr);
                regs.pool.unpark(n);
            }
            Err(e) => {
                tracing::warn!(
                    target: "blit::rdma",
                    "{what}: registered {first_slot} of {slots} slots, then: {e}; going on with those"
                );
                return;
            }
        }
    }
}

impl Drop for RegisteredPool {
    fn drop(&mut self) {
        if let Some(r) = &self.regs {
            r.stop.store(true, Ordering::Release);
            // not wait out REGISTRAR_POLL: a session's end would pay it
            r.pool.release_starved_waiter();
        }
        if let Some(t) = self.registrar.take() {
            let _ = t.join(); // one group's registration at most
        }
        if let (Some(regs), Some(home)) = (self.regs.take(), self.home.take()) {
            home.keep(regs);
        }
    }
}
