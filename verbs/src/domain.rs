//! A verbs domain: one open device, its port and one protection domain,
//! shared by every session of a process, plus the registered pools it keeps
//! between sessions.
//!
//! Why keep pools: registering a pool pins its pages and the kernel clears
//! every fresh one, so a session that registers its 64 MiB ring pays for it
//! before the first byte moves (~0.25 s under the Soft-RoCE lab's emulation,
//! tens of ms on a server). A daemon serves many sessions of the same shape,
//! so it keeps the last few pools registered (`idle_pools_max`). A kept pool
//! is bound to this domain's PD, which is why sessions that reuse pools must
//! be set up in the same domain.
//!
//! Owns the context and PD handles (through `Arc`s) and the idle pools; it
//! does not touch a pool's slots and knows nothing of a transport's
//! configuration (the transport crate turns its config into [`PoolKey`]s).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::device::Context;
use crate::error::Result;
use crate::pd_mr::ProtectionDomain;
use crate::pool_mr::{RegisteredPool, Regs};
use crate::types::Access;

/// The shape of a registered pool: what a session needs to reuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolKey {
    /// Slots in the pool.
    pub slots: usize,
    /// Bytes per slot.
    pub slot_bytes: usize,
    /// The access rights of the registration.
    pub access: Access,
}

/// A poisoned lock still guards a consistent list (every critical section
/// below is a push, a remove or a read).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct DomainInner {
    // Field order is drop order: idle pools (their MRs hold the PD) → PD → context.
    idle: Mutex<Vec<Arc<Regs>>>,
    pd: Arc<ProtectionDomain>,
    ctx: Arc<Context>,
    port_num: u8,
    idle_pools_max: usize,
}

/// A device opened once for many sessions. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Domain {
    inner: Arc<DomainInner>,
}

impl Domain {
    /// Allocates a PD on `ctx` (whose port `port_num` the sessions use). Up
    /// to `idle_pools_max` registered pools are kept when sessions end (0:
    /// none; every session registers its own).
    pub fn open(ctx: Arc<Context>, port_num: u8, idle_pools_max: usize) -> Result<Self> {
        let pd = ProtectionDomain::new(&ctx)?;
        Ok(Domain {
            inner: Arc::new(DomainInner {
                idle: Mutex::new(Vec::new()),
                pd,
                ctx,
                port_num,
                idle_pools_max,
            }),
        })
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        self.inner.ctx.name()
    }

    /// The device context.
    pub fn ctx(&self) -> &Arc<Context> {
        &self.inner.ctx
    }

    /// The protection domain every session of this domain uses.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.inner.pd
    }

    /// The port it was opened for.
    pub fn port_num(&self) -> u8 {
        self.inner.port_num
    }

    /// Registered bytes kept idle right now.
    pub fn idle_bytes(&self) -> u64 {
        lock(&self.inner.idle).iter().map(|r| (r.key().slots * r.key().slot_bytes) as u64).sum()
    }

    /// The home for a pool registered in this domain (`None` when nothing is kept).
    fn home(&self) -> Option<Domain> {
        (self.inner.idle_pools_max > 0).then(|| self.clone())
    }

    /// An idle pool of exactly this shape, if one is kept.
    fn take(&self, key: PoolKey) -> Option<RegisteredPool> {
        let mut idle = lock(&self.inner.idle);
        let i = idle.iter().position(|r| r.key() == key)?;
        let regs = idle.remove(i);
        Some(RegisteredPool::reused(regs, self.clone()))
    }

    /// Takes back a pool whose session ended (the newest are kept).
    pub(crate) fn keep(&self, regs: Arc<Regs>) {
        if self.inner.idle_pools_max == 0 || !regs.complete() {
            return;
        }
        regs.reopen();
        let mut idle = lock(&self.inner.idle);
        idle.push(regs);
        while idle.len() > self.inner.idle_pools_max {
            idle.remove(0); // deregistered here
        }
    }

    /// A pool of this shape registered whole (one region: one address and
    /// rkey for a peer): a kept one if there is one, else a new one.
    pub fn pool_whole(&self, key: PoolKey, what: &'static str) -> Result<RegisteredPool> {
        match self.take(key) {
            Some(p) => Ok(p),
            None => RegisteredPool::new(
                self.pd(),
                key.slots,
                key.slot_bytes,
                key.access,
                self.home(),
                what,
            ),
        }
    }

    /// A pool of this shape registered `group_slots` at a time, on demand
    /// ([`RegisteredPool::growing`]): a kept one if there is one, else a new one.
    pub fn pool_growing(
        &self,
        key: PoolKey,
        group_slots: usize,
        what: &'static str,
    ) -> Result<RegisteredPool> {
        match self.take(key) {
            Some(p) => Ok(p),
            None => RegisteredPool::growing(
                self.pd(),
                key.slots,
                key.slot_bytes,
                group_slots,
                key.access,
                self.home(),
                what,
            ),
        }
    }
}
