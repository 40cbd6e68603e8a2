//! [`RdmaDomain`]: the verbs crate's [`Domain`] (one device context + PD per
//! process, registered pools kept between sessions) opened from an
//! [`RdmaConfig`], and the two pools a session asks it for.
//!
//! Owns nothing of its own: the device, the PD and the idle pools live in the
//! verbs domain; this module only turns the transport's configuration into
//! pool shapes ([`PoolKey`]) and opens the configured device.

use std::sync::Arc;

use blitx_verbs::{Access, Context, Domain, PoolKey, ProtectionDomain, RegisteredPool, Result};

use crate::config::RdmaConfig;
use crate::link::open_device;

/// A device opened once for many sessions. Cloning shares it.
///
/// Why keep pools, and why a kept pool binds sessions to one domain: see the
/// verbs crate's `Domain`.
#[derive(Debug, Clone)]
pub struct RdmaDomain {
    verbs: Domain,
}

impl RdmaDomain {
    /// Opens `cfg`'s device (or the first with an ACTIVE port) and allocates
    /// a PD. Up to `idle_pools_max` registered pools are kept when sessions
    /// end (0: none; every session registers its own).
    pub fn open(cfg: &RdmaConfig, idle_pools_max: usize) -> Result<Self> {
        let (ctx, port_num) = open_device(cfg)?;
        Ok(RdmaDomain { verbs: Domain::open(ctx, port_num, idle_pools_max)? })
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        self.verbs.device()
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
        self.verbs.idle_bytes()
    }

    pub(crate) fn ctx(&self) -> &Arc<Context> {
        self.verbs.ctx()
    }

    pub(crate) fn pd(&self) -> &Arc<ProtectionDomain> {
        self.verbs.pd()
    }

    pub(crate) fn port_num(&self, cfg: &RdmaConfig) -> u8 {
        cfg.port_num.unwrap_or(self.verbs.port_num())
    }

    /// The receiver's ring: `cfg.slots` slots of `chunk + 4 KiB`, registered
    /// whole for remote writes (one address and rkey for the peer).
    pub(crate) fn receiver_ring(&self, cfg: &RdmaConfig) -> Result<RegisteredPool> {
        let key = PoolKey {
            slots: cfg.slots as usize,
            slot_bytes: cfg.slot_bytes() as usize, // <= POOL_BYTES_MAX (validated)
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        };
        self.verbs.pool_whole(key, "receiver ring")
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
        self.verbs.pool_growing(key, 1, "sender pool")
    }
}
