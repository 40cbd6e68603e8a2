//! Device discovery and the opened device context.
//!
//! Owns `ibv_context` (through [`Context`]) and the short-lived device list.
//! Everything else (PD, CQ, QP) holds an `Arc<Context>`, so the context is
//! closed last.

use std::ffi::CStr;
use std::mem;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gid::{GidEntry, select_gid_index};
use crate::sys::{self, Verbs, ibv_context, ibv_device, ibv_device_attr, ibv_gid, ibv_gid_entry};
use crate::sysfs::{self, SYSFS_CLASS_DIR};
use crate::types::{Gid, GidType, LinkLayer, Mtu, PortState, link_gbps};

/// Upper bound on GID table entries read per port. rxe reports 1024 slots
/// (2 used), mlx5 256; reading more is a waste and a bound is the rule.
const GID_TABLE_MAX: usize = 1024;

/// Device limits that matter for sizing queues and registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLimits {
    /// Largest number of QPs.
    pub max_qp: u32,
    /// Largest work-queue depth per QP.
    pub max_qp_wr: u32,
    /// Largest number of SGEs per WR.
    pub max_sge: u32,
    /// Largest number of CQs.
    pub max_cq: u32,
    /// Largest CQ depth.
    pub max_cqe: u32,
    /// Largest number of MRs.
    pub max_mr: u32,
    /// Largest MR size in bytes.
    pub max_mr_size_bytes: u64,
    /// Largest outstanding RDMA READ/atomic as responder, per QP.
    pub max_qp_rd_atom: u32,
    /// Number of physical ports.
    pub phys_port_cnt: u8,
}

/// One port of a device, as queried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortInfo {
    /// 1-based port number.
    pub port_num: u8,
    /// Logical state.
    pub state: PortState,
    /// The MTU in use (for RoCE: derived from the netdev MTU).
    pub active_mtu: Option<Mtu>,
    /// The largest MTU the port supports.
    pub max_mtu: Option<Mtu>,
    /// InfiniBand or Ethernet.
    pub link_layer: LinkLayer,
    /// Local identifier (IB; 0 on RoCE).
    pub lid: u16,
    /// Raw `active_speed` code.
    pub active_speed: u8,
    /// Raw `active_width` code.
    pub active_width: u8,
    /// Link rate computed from speed × width, when the codes are known.
    pub link_gbps: Option<f64>,
    /// Number of slots in the GID table.
    pub gid_table_len: u32,
    /// The valid (non-zero) GID entries.
    pub gids: Vec<GidEntry>,
    /// The index [`select_gid_index`] picks (RoCE v2 + IPv4-mapped first).
    pub chosen_gid_index: Option<u32>,
}

impl PortInfo {
    /// The chosen GID entry.
    pub fn chosen_gid(&self) -> Option<&GidEntry> {
        let index = self.chosen_gid_index?;
        self.gids.iter().find(|e| e.index == index)
    }
}

/// A device as [`discover`] reports it. Serializable for `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device name, e.g. `mlx5_0` or `rxe0`.
    pub name: String,
    /// Node GUID in the usual `xxxx:xxxx:xxxx:xxxx` form.
    pub node_guid: String,
    /// Firmware version string.
    pub fw_ver: String,
    /// NUMA node of the PCI device; `None` if unknown or virtual.
    pub numa_node: Option<u32>,
    /// The netdev the device is bound to, if sysfs says.
    pub netdev: Option<String>,
    /// Limits (only when the device could be opened).
    pub limits: Option<DeviceLimits>,
    /// Ports (empty when the device could not be opened).
    pub ports: Vec<PortInfo>,
    /// Why the device could not be opened or queried, if it could not.
    pub error: Option<String>,
}

impl DeviceInfo {
    /// The first ACTIVE port.
    pub fn active_port(&self) -> Option<&PortInfo> {
        self.ports.iter().find(|p| p.state == PortState::Active)
    }
}

/// Formats a big-endian GUID as `ibv_devinfo` does.
fn format_guid(guid_be: u64) -> String {
    let guid = u64::from_be(guid_be);
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (guid >> 48) & 0xffff,
        (guid >> 32) & 0xffff,
        (guid >> 16) & 0xffff,
        guid & 0xffff
    )
}

/// `ibv_get_device_list()` result, freed on drop.
struct DeviceList {
    verbs: &'static Verbs,
    list: NonNull<*mut ibv_device>,
    len: usize,
}

impl DeviceList {
    fn new(verbs: &'static Verbs) -> Result<Self> {
        let mut count: libc::c_int = 0;
        // SAFETY: `count` is a valid out-pointer; the returned array (or NULL
        // with errno) is owned by us until ibv_free_device_list.
        let list = unsafe { (verbs.get_device_list)(&mut count) };
        let Some(list) = NonNull::new(list) else {
            let source = std::io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                // no /sys/class/infiniband_verbs: the kernel has no RDMA core
                Some(libc::ENOSYS) => Error::Unsupported { source },
                _ => Error::verbs("ibv_get_device_list", source),
            });
        };
        let len = usize::try_from(count).unwrap_or(0);
        Ok(DeviceList { verbs, list, len })
    }

    fn devices(&self) -> impl Iterator<Item = (String, *mut ibv_device)> + '_ {
        (0..self.len).filter_map(move |i| {
            // SAFETY: the list holds `len` device pointers (then a NULL).
            let device = unsafe { *self.list.as_ptr().add(i) };
            if device.is_null() {
                return None;
            }
            // SAFETY: `device` is a live entry of the list; the name is a
            // NUL-terminated string inside it.
            let name = unsafe { (self.verbs.get_device_name)(device) };
            if name.is_null() {
                return None;
            }
            // SAFETY: non-null, NUL-terminated, valid while the list lives.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
            Some((name, device))
        })
    }

    fn names(&self) -> Vec<String> {
        self.devices().map(|(name, _)| name).collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed once.
        // Contexts opened from it stay valid (rdma-core refcounts devices).
        unsafe { (self.verbs.free_device_list)(self.list.as_ptr()) };
    }
}

/// An opened RDMA device (`ibv_context`). Closed when the last `Arc` (held by
/// every PD/CQ/QP made from it) is dropped.
pub struct Context {
    raw: NonNull<ibv_context>,
    verbs: &'static Verbs,
    name: String,
    node_guid: String,
    fw_ver: String,
    limits: DeviceLimits,
}

// SAFETY: libibverbs contexts may be used from any thread; every verb on them
// is thread-safe (rdma-core's documented guarantee), and this type exposes no
// interior mutability of its own.
unsafe impl Send for Context {}
// SAFETY: see above.
unsafe impl Sync for Context {}

/// Loads libibverbs and its provider libraries and lists the devices once, so
/// that a later [`Context::open`] finds them ready. libibverbs loads every
/// provider it is configured for on the first device list (17 libraries with
/// Debian's ibverbs-providers): 60-150 ms on a small or emulated machine. A
/// client calls this on a thread of its own while it does other start-up work.
/// Errors are ignored here; the later open reports them.
pub fn preload() {
    if let Ok(verbs) = sys::verbs() {
        let _ = DeviceList::new(verbs);
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Context {
    /// Opens the device called `name` (e.g. `rxe0`).
    pub fn open(name: &str) -> Result<Arc<Self>> {
        let verbs = sys::verbs()?;
        let list = DeviceList::new(verbs)?;
        let device = list.devices().find(|(n, _)| n == name).map(|(_, d)| d);
        match device {
            Some(device) => Context::open_device(verbs, device, name),
            None if list.len == 0 => {
                Err(Error::NoDevice { reason: sysfs::no_device_reason(Path::new(SYSFS_CLASS_DIR)) })
            }
            None => Err(Error::DeviceNotFound { name: name.to_owned(), available: list.names() }),
        }
    }

    /// Opens the first device that has an ACTIVE port.
    pub fn open_first_active() -> Result<Arc<Self>> {
        let verbs = sys::verbs()?;
        let list = DeviceList::new(verbs)?;
        let mut seen = Vec::new();
        for (name, device) in list.devices() {
            match Context::open_device(verbs, device, &name) {
                Ok(ctx) => match ctx.first_active_port() {
                    Ok(Some(_)) => return Ok(ctx),
                    Ok(None) => seen.push(format!("{name}: no ACTIVE port")),
                    Err(e) => seen.push(format!("{name}: {e}")),
                },
                Err(e) => seen.push(format!("{name}: {e}")),
            }
        }
        let reason = if seen.is_empty() {
            sysfs::no_device_reason(Path::new(SYSFS_CLASS_DIR))
        } else {
            format!("no RDMA device with an ACTIVE port ({})", seen.join("; "))
        };
        Err(Error::NoDevice { reason })
    }

    fn open_device(
        verbs: &'static Verbs,
        device: *mut ibv_device,
        name: &str,
    ) -> Result<Arc<Self>> {
        // SAFETY: `device` is a live entry of a device list that outlives this
        // call; NULL + errno on failure.
        let raw = unsafe { (verbs.open_device)(device) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::verbs("ibv_open_device", std::io::Error::last_os_error()))?;
        // SAFETY: ibv_device_attr is plain old data; all-zero is valid.
        let mut attr: ibv_device_attr = unsafe { mem::zeroed() };
        // SAFETY: `raw` is the context just opened, `attr` a valid out-pointer.
        let rc = unsafe { (verbs.query_device)(raw.as_ptr(), &mut attr) };
        if rc != 0 {
            let source = sys::rc_error(rc);
            // SAFETY: closing the context we opened above, exactly once.
            unsafe { (verbs.close_device)(raw.as_ptr()) };
            return Err(Error::verbs("ibv_query_device", source));
        }
        let to_u32 = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
        let limits = DeviceLimits {
            max_qp: to_u32(attr.max_qp),
            max_qp_wr: to_u32(attr.max_qp_wr),
            max_sge: to_u32(attr.max_sge),
            max_cq: to_u32(attr.max_cq),
            max_cqe: to_u32(attr.max_cqe),
            max_mr: to_u32(attr.max_mr),
            max_mr_size_bytes: attr.max_mr_size,
            max_qp_rd_atom: to_u32(attr.max_qp_rd_atom),
            phys_port_cnt: attr.phys_port_cnt,
        };
        let fw_ver =
            attr.fw_ver.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
        Ok(Arc::new(Context {
            raw,
            verbs,
            name: name.to_owned(),
            node_guid: format_guid(attr.node_guid),
            fw_ver,
            limits,
        }))
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device limits (from `ibv_query_device` at open).
    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_context {
        self.raw.as_ptr()
    }

    pub(crate) fn verbs(&self) -> &'static Verbs {
        self.verbs
    }

    /// The first ACTIVE port number, if any.
    pub fn first_active_port(&self) -> Result<Option<u8>> {
        for port in 1..=self.limits.phys_port_cnt {
            if self.query_port_attr(port)?.state == PortState::Active {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    /// The port's attributes without the GID table (cheap).
    pub(crate) fn query_port_attr(&self, port_num: u8) -> Result<PortAttr> {
        if port_num == 0 || port_num > self.limits.phys_port_cnt {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "port {port_num} does not exist on {} (ports 1..={})",
                    self.name, self.limits.phys_port_cnt
                ),
            });
        }
        // SAFETY: ibv_port_attr is plain old data; all-zero is valid.
        let mut attr: sys::ibv_port_attr = unsafe { mem::zeroed() };
        // SAFETY: the context is open; `attr` is a full-sized out-parameter.
        let rc = unsafe { sys::query_port(self.verbs, self.as_ptr(), port_num, &mut attr) };
        if rc != 0 {
            return Err(Error::verbs("ibv_query_port", sys::rc_error(rc)));
        }
        Ok(PortAttr {
            port_num,
            state: PortState::from_raw(attr.state),
            active_mtu: Mtu::from_raw(attr.active_mtu),
            max_mtu: Mtu::from_raw(attr.max_mtu),
            link_layer: LinkLayer::from_raw(attr.link_layer),
            lid: attr.lid,
            active_speed: attr.active_speed,
            active_width: attr.active_width,
            gid_table_len: u32::try_from(attr.gid_tbl_len).unwrap_or(0),
        })
    }

    /// The port's attributes and its valid GID entries.
    pub fn query_port(&self, port_num: u8) -> Result<PortInfo> {
        let attr = self.query_port_attr(port_num)?;
        let gids = self.gid_table(&attr)?;
        Ok(attr.into_info(gids))
    }

    /// Everything [`discover`] reports about this device.
    pub fn info(&self) -> Result<DeviceInfo> {
        let class_dir = Path::new(SYSFS_CLASS_DIR);
        let ports = (1..=self.limits.phys_port_cnt)
            .map(|port| self.query_port(port))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceInfo {
            name: self.name.clone(),
            node_guid: self.node_guid.clone(),
            fw_ver: self.fw_ver.clone(),
            numa_node: sysfs::numa_node(class_dir, &self.name),
            netdev: sysfs::netdev(class_dir, &self.name),
            limits: Some(self.limits),
            ports,
            error: None,
        })
    }

    /// Reads the valid GID entries of one port: `_ibv_query_gid_table` where
    /// the library has it (type and netdev included), else `ibv_query_gid` per
    /// index with the type from sysfs.
    fn gid_table(&self, attr: &PortAttr) -> Result<Vec<GidEntry>> {
        let class_dir = Path::new(SYSFS_CLASS_DIR);
        let port = attr.port_num;
        let slots = usize::try_from(attr.gid_table_len).unwrap_or(0).min(GID_TABLE_MAX);
        let from_table = self.gid_table_ex(slots, port);
        let mut entries = Vec::new();
        if let Some(table) = from_table {
            for (index, gid, gid_type) in table {
                let netdev = sysfs::gid_netdev(class_dir, &self.name, port, index);
                let gid_type = gid_type.or_else(|| {
                    sysfs::gid_type(class_dir, &self.name, port, index, attr.link_layer)
                });
                entries.push(GidEntry::new(index, gid, gid_type, netdev));
            }
        } else {
            for index in 0..slots {
                let Ok(index_c) = libc::c_int::try_from(index) else { break };
                // SAFETY: ibv_gid is 16 plain bytes; all-zero is valid.
                let mut raw: ibv_gid = unsafe { mem::zeroed() };
                // SAFETY: open context, valid port, out-pointer to 16 bytes.
                let rc = unsafe { (self.verbs.query_gid)(self.as_ptr(), port, index_c, &mut raw) };
                if rc != 0 {
                    continue; // unused slots may fail (ENODATA); they are skipped
                }
                // SAFETY: every bit pattern of the union is a valid [u8; 16].
                let gid = Gid::from_bytes(unsafe { raw.raw });
                if gid.is_zero() {
                    continue;
                }
                let index = index as u32; // < GID_TABLE_MAX
                let gid_type = sysfs::gid_type(class_dir, &self.name, port, index, attr.link_layer);
                let netdev = sysfs::gid_netdev(class_dir, &self.name, port, index);
                entries.push(GidEntry::new(index, gid, gid_type, netdev));
            }
        }
        entries.sort_by_key(|e| e.index);
        Ok(entries)
    }

    /// `_ibv_query_gid_table` for one port; `None` when the export is missing
    /// or the call fails (the caller then falls back to per-index queries).
    fn gid_table_ex(&self, slots: usize, port: u8) -> Option<Vec<(u32, Gid, Option<GidType>)>> {
        let query = self.verbs.query_gid_table?;
        // The call fills entries of *all* ports and fails with EINVAL when the
        // buffer is too small, so size it for every port.
        let capacity = slots.max(1).saturating_mul(usize::from(self.limits.phys_port_cnt.max(1)));
        // SAFETY: ibv_gid_entry is plain old data; all-zero is valid.
        let mut buf: Vec<ibv_gid_entry> = (0..capacity).map(|_| unsafe { mem::zeroed() }).collect();
        // SAFETY: `buf` holds `capacity` entries of the size passed.
        let n = unsafe {
            query(self.as_ptr(), buf.as_mut_ptr(), capacity, 0, mem::size_of::<ibv_gid_entry>())
        };
        let n = usize::try_from(n).ok()?.min(capacity);
        Some(
            buf[..n]
                .iter()
                .filter(|e| e.port_num == u32::from(port))
                .map(|e| {
                    // SAFETY: every bit pattern of the union is a valid [u8; 16].
                    let gid = Gid::from_bytes(unsafe { e.gid.raw });
                    (e.gid_index, gid, GidType::from_raw(e.gid_type))
                })
                .filter(|(_, gid, _)| !gid.is_zero())
                .collect(),
        )
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened in open_device, closed exactly once; every PD/CQ/QP
        // holds an Arc<Context>, so none is left when this runs.
        let rc = unsafe { (self.verbs.close_device)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(device = %self.name, error = %sys::rc_error(rc), "ibv_close_device failed");
        }
    }
}

/// Port attributes without the GID table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortAttr {
    pub(crate) port_num: u8,
    pub(crate) state: PortState,
    pub(crate) active_mtu: Option<Mtu>,
    pub(crate) max_mtu: Option<Mtu>,
    pub(crate) link_layer: LinkLayer,
    pub(crate) lid: u16,
    pub(crate) active_speed: u8,
    pub(crate) active_width: u8,
    pub(crate) gid_table_len: u32,
}

impl PortAttr {
    fn into_info(self, gids: Vec<GidEntry>) -> PortInfo {
        let chosen_gid_index = select_gid_index(&gids, self.link_layer);
        PortInfo {
            port_num: self.port_num,
            state: self.state,
            active_mtu: self.active_mtu,
            max_mtu: self.max_mtu,
            link_layer: self.link_layer,
            lid: self.lid,
            active_speed: self.active_speed,
            active_width: self.active_width,
            link_gbps: link_gbps(self.active_speed, self.active_width),
            gid_table_len: self.gid_table_len,
            gids,
            chosen_gid_index,
        }
    }
}

/// Lists every RDMA device with its ports and GIDs.
///
/// Fails with a typed "unavailable" error ([`Error::is_unavailable`]) when
/// libibverbs is missing or the kernel has no RDMA support; returns an empty
/// list when verbs work but no device exists. A device that cannot be opened
/// is listed with `error` set.
pub fn discover() -> Result<Vec<DeviceInfo>> {
    let verbs = sys::verbs()?;
    let list = DeviceList::new(verbs)?;
    let class_dir = Path::new(SYSFS_CLASS_DIR);
    let mut devices = Vec::new();
    for (name, device) in list.devices() {
        let info = Context::open_device(verbs, device, &name).and_then(|ctx| ctx.info());
        devices.push(info.unwrap_or_else(|e| DeviceInfo {
            numa_node: sysfs::numa_node(class_dir, &name),
            netdev: sysfs::netdev(class_dir, &name),
            name,
            node_guid: String::new(),
            fw_ver: String::new(),
            limits: None,
            ports: Vec::new(),
            error: Some(e.to_string()),
        }));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_format_matches_ibv_devinfo() {
        let guid = 0x5054_00ff_fe77_0001_u64.to_be();
        assert_eq!(format_guid(guid), "5054:00ff:fe77:0001");
    }

    #[test]
    fn discover_reports_a_typed_reason_or_devices() {
        match discover() {
            Ok(devices) => {
                for d in &devices {
                    assert!(!d.name.is_empty());
                }
            }
            Err(e) => assert!(e.is_unavailable(), "unexpected error kind: {e:?}"),
        }
    }
}
