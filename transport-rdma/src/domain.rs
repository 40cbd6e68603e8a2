//! An RDMA domain: one open device, its port and one protection domain,
//! shared by every session of a process, plus the registered pools it keeps
//! between sessions.
//!
//! Why keep pools: registering a pool pins its pages and the kernel clears
//! every fresh one, so a session that registers its 64 MiB ring pays for it
//! before the first byte moves (~0.25 s under the Soft-RoCE lab's emulation,
//! tens of ms on a server). A daemon serves many sessions of the same shape,
//! so it keeps the last few pools registered ([`RdmaDomain::open`]'s
//! `idle_pools_max`) and can register its default ring when it starts
//! ([`RdmaDomain::prewarm`]). A kept pool is bound to this domain's PD, which
//! is why sessions that reuse pools must be set up in the same domain.
//!
//! Owns the context and PD handles (through `Arc`s) and the idle pools; it
//! does not touch a pool's slots.

use std::sync::{Arc, Mutex};

use crate::config::RdmaConfig;
use crate::device::Context;
use crate::error::Result;
use crate::link::{lock, open_device};
use crate::pd_mr::ProtectionDomain;
use crate::pool_mr::{RegisteredPool, Regs};
use crate::types::Access;

/// The shape of a registered pool: what a session needs to reuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolKey {
    pub(crate) slots: usize,
    pub(crate) slot_bytes: usize,
    pub(crate) access: Access,
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
pub struct RdmaDomain {
    inner: Arc<DomainInner>,
}

impl RdmaDomain {
    /// Opens `cfg`'s device (or the first with an ACTIVE port) and allocates
    /// a PD. Up to `idle_pools_max` registered pools are kept when sessions
    /// end (0: none; every session registers its own).
    pub fn open(cfg: &RdmaConfig, idle_pools_max: usize) -> Result<Self> {
        let (ctx, port_num) = open_device(cfg)?;
        let pd = ProtectionDomain::new(&ctx)?;
        Ok(RdmaDomain {
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

    /// Registers the receiver ring a session configured like `cfg` will ask
    /// for and keeps it idle, so the first such session does not wait for it.
    /// Returns the bytes registered.
    pub fn prewarm(&self, cfg: &RdmaConfig) -> Result<u64> {
        cfg.validate()?;
        let ring = self.receiver_ring(cfg)?;
        let bytes = ring.registered_bytes();
        drop(ring); // back to the idle list
        Ok(bytes)
    }

    /// Registered bytes kept idle right now.
    pub fn idle_bytes(&self) -> u64 {
        lock(&self.inner.idle).iter().map(|r| (r.key().slots * r.key().slot_bytes) as u64).sum()
    }

    pub(crate) fn ctx(&self) -> &Arc<Context> {
        &self.inner.ctx
    }

    pub(crate) fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.inner.pd
    }

    pub(crate) fn port_num(&self, cfg: &RdmaConfig) -> u8 {
        cfg.port_num.unwrap_or(self.inner.port_num)
    }

    /// The home for a pool registered in this domain (`None` when nothing is kept).
    fn home(&self) -> Option<RdmaDomain> {
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

    /// The receiver's ring: `cfg.slots` slots of `chunk + 4 KiB`, registered
    /// whole for remote writes (one address and rkey for the peer).
    pub(crate) fn receiver_ring(&self, cfg: &RdmaConfig) -> Result<RegisteredPool> {
        let key = PoolKey {
            slots: cfg.slots as usize,
            slot_bytes: cfg.slot_bytes() as usize, // <= POOL_BYTES_MAX (validated)
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        };
        match self.take(key) {
            Some(p) => Ok(p),
            None => RegisteredPool::new(
                self.pd(),
                key.slots,
                key.slot_bytes,
                key.access,
                self.home(),
                "receiver ring",
            ),
        }
    }

    /// The sender's pool: `cfg.pool_slots` buffers of `chunk_bytes`, local
    /// access only, registered one slot at a time after the first (readers
    /// start on the first while the rest is registered).
    pub(crate) fn sender_pool(&self, cfg: &RdmaConfig) -> Result<RegisteredPool> {
        let key = PoolKey {
            slots: cfg.pool_slots as usize,
            slot_bytes: cfg.chunk_bytes as usize,
            access: Access::LOCAL_WRITE,
        };
        match self.take(key) {
            Some(p) => Ok(p),
            None => RegisteredPool::growing(
                self.pd(),
                key.slots,
                key.slot_bytes,
                1,
                key.access,
                self.home(),
                "sender pool",
            ),
        }
    }
}
