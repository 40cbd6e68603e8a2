//! Memory-binding shell: asks the kernel to place a buffer region's pages on a NUMA node
//! (`mbind(2)`), and to say where a page landed (`get_mempolicy(2)`).
//!
//! Owns the only `unsafe` in this crate: raw system calls. It must not allocate or touch the
//! memory it is handed. The buffer pools are bound through hwloc instead (`workers.rs`, over a
//! `&[UnsafeCell<u8>]` the pool hands out before first touch); [`bind_memory`] stays as the
//! plain-`mbind` reference that tests check hwloc's result against, and for callers that only
//! have an address. [`prefer_node_for_current_thread`] sets the starting thread's policy.
//!
//! Why `MPOL_PREFERRED` rather than `MPOL_BIND`: with `BIND`, a node that runs out of memory
//! (or of huge pages) makes the first touch fail with SIGBUS/OOM; `PREFERRED` falls back to
//! another node, which costs bandwidth, not the transfer.
//!
//! Why these functions are safe to call with any pointer: `mbind` changes only the NUMA policy
//! of the pages in the range (with `MPOL_MF_MOVE` it migrates already-present pages, keeping
//! their contents), and `get_mempolicy` only looks the address up; neither reads or writes the
//! memory from Rust's point of view, and the kernel rejects ranges that are not mapped
//! (`EFAULT`/`ENOMEM`), so no pointer value can cause memory unsafety.

use std::io;

/// `mbind` flag: move pages already allocated elsewhere (numaif.h; not in the libc crate).
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;
/// `get_mempolicy` flags: return the node of the page at the address (numaif.h).
const MPOL_F_NODE: libc::c_ulong = 1 << 0;
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// The kernel refuses node masks longer than a page of bits; `MAX_NUMNODES` is at most 1024 on
/// distribution kernels, so ids above this cannot exist.
const NODE_ID_MAX: u32 = 4095;
const ULONG_BITS: usize = libc::c_ulong::BITS as usize;

/// Why binding a region failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembindError {
    #[error("cannot bind memory at {addr:#x}: not aligned to the {page_bytes}-byte page size")]
    Unaligned { addr: usize, page_bytes: usize },
    #[error("cannot bind memory to NUMA node {node}: node ids stop at {NODE_ID_MAX}")]
    NodeOutOfRange { node: u32 },
    #[error("mbind of {len} bytes at {addr:#x} to NUMA node {node} failed")]
    Mbind {
        addr: usize,
        len: usize,
        node: u32,
        #[source]
        source: io::Error,
    },
}

impl MembindError {
    /// The kernel or a sandbox does not allow memory policies here (no NUMA support, a
    /// seccomp profile such as Docker's default without `CAP_SYS_NICE`): nothing to fix in blit.
    pub fn is_unsupported(&self) -> bool {
        match self {
            MembindError::Mbind { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP))
            }
            _ => false,
        }
    }
}

/// Asks the kernel to allocate the pages of `[ptr, ptr + len)` on NUMA `node` (preferred, not
/// strict; see the module docs) and to move any already there. Best effort: returns whether it
/// worked and logs why not. `ptr` must be page aligned (an `mmap` result is); `len` is rounded
/// up to whole pages by the kernel.
pub fn bind_memory(ptr: *const u8, len: usize, node: u32) -> bool {
    match try_bind_memory(ptr, len, node) {
        Ok(()) => {
            tracing::debug!(node, len, "bound buffer memory");
            true
        }
        Err(e) if e.is_unsupported() => {
            tracing::info!("buffer memory left unbound: {e} (memory policies unavailable here)");
            false
        }
        Err(e) => {
            tracing::warn!("buffer memory left unbound: {e}");
            false
        }
    }
}

/// [`bind_memory`] with the reason for a failure, for callers and tests that branch on it.
pub fn try_bind_memory(ptr: *const u8, len: usize, node: u32) -> Result<(), MembindError> {
    let addr = ptr as usize;
    let page_bytes = page_bytes();
    if !addr.is_multiple_of(page_bytes) {
        return Err(MembindError::Unaligned { addr, page_bytes });
    }
    if node > NODE_ID_MAX {
        return Err(MembindError::NodeOutOfRange { node });
    }
    if len == 0 {
        return Ok(());
    }
    let words = node as usize / ULONG_BITS + 1;
    let mut mask: Vec<libc::c_ulong> = vec![0; words];
    mask[node as usize / ULONG_BITS] |= 1 << (node as usize % ULONG_BITS);
    // The kernel reads `maxnode - 1` bits (a long-standing off-by-one that libnuma also
    // compensates for), so pass one more than the mask holds.
    let maxnode = (words * ULONG_BITS + 1) as libc::c_ulong;
    // SAFETY: mbind only changes the NUMA policy of (and may migrate, preserving contents) the
    // pages in [addr, addr + len) of our own address space; it never touches Rust-visible
    // memory except reading `mask`, which is a live Vec of `words` longs covering `maxnode - 1`
    // bits. An unmapped range is rejected by the kernel with an error, not undefined behaviour.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            libc::MPOL_PREFERRED as libc::c_ulong,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_MOVE as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(MembindError::Mbind { addr, len, node, source: io::Error::last_os_error() })
    }
}

/// Makes NUMA `node` the preferred node for every allocation the calling thread (and the
/// threads it creates afterwards, which inherit the policy) makes from now on: one call at the
/// start of a session puts its buffer pool, socket buffers and page-cache pages near the device.
/// Best effort, like [`bind_memory`].
pub fn prefer_node_for_current_thread(node: u32) -> bool {
    if node > NODE_ID_MAX {
        return false;
    }
    let words = node as usize / ULONG_BITS + 1;
    let mut mask: Vec<libc::c_ulong> = vec![0; words];
    mask[node as usize / ULONG_BITS] |= 1 << (node as usize % ULONG_BITS);
    let maxnode = (words * ULONG_BITS + 1) as libc::c_ulong;
    // SAFETY: set_mempolicy only changes the calling thread's allocation policy; the kernel
    // reads `maxnode - 1` bits from `mask`, a live Vec covering them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            libc::MPOL_PREFERRED as libc::c_ulong,
            mask.as_ptr(),
            maxnode,
        )
    };
    if rc != 0 {
        tracing::info!("memory policy left as is: set_mempolicy: {}", io::Error::last_os_error());
    }
    rc == 0
}

/// The NUMA node holding the page at `ptr`, for verifying a binding (`--profile`, tests).
/// Call it on memory that has been written: for a page never touched the kernel reports where
/// a read fault would put it. `None` if the kernel will not say.
pub fn memory_node_of(ptr: *const u8) -> Option<u32> {
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int to `node` (a live local) and, with a null node mask
    // and maxnode 0, nothing else; MPOL_F_ADDR makes the kernel look `ptr` up in our address
    // space, which it validates (EFAULT for an unmapped address).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            ptr as libc::c_ulong,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if rc == 0 { u32::try_from(node).ok() } else { None }
}

fn page_bytes() -> usize {
    // SAFETY: sysconf reads a constant of the running system; no pointers involved.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page-aligned window inside a fresh heap allocation (glibc serves 8 MiB with mmap, so
    /// its pages are untouched until written), found without unsafe code.
    fn aligned_window(buf: &mut [u8], len: usize) -> (usize, *const u8) {
        let offset = buf.as_ptr().align_offset(page_bytes());
        assert!(offset + len <= buf.len());
        (offset, buf.as_ptr().wrapping_add(offset))
    }

    #[test]
    fn binding_to_node_0_puts_pages_there_or_says_why_not() {
        let len = 4 << 20;
        let mut buf = vec![0u8; len + 2 * page_bytes()];
        let (offset, ptr) = aligned_window(&mut buf, len);
        match try_bind_memory(ptr, len, 0) {
            Ok(()) => {
                buf[offset..offset + len].fill(1);
                assert_eq!(memory_node_of(buf[offset..].as_ptr()), Some(0));
            }
            Err(e) if e.is_unsupported() => {
                eprintln!("SKIPPED: memory policies unavailable here: {e}");
            }
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn bad_requests_are_refused_before_the_kernel() {
        let buf = vec![0u8; 3 * page_bytes()];
        let odd = buf.as_ptr().wrapping_add(buf.as_ptr().align_offset(page_bytes()) + 1);
        assert!(matches!(try_bind_memory(odd, 4096, 0), Err(MembindError::Unaligned { .. })));
        assert!(!bind_memory(odd, 4096, 0));
        let aligned = buf.as_ptr().wrapping_add(buf.as_ptr().align_offset(page_bytes()));
        assert!(matches!(
            try_bind_memory(aligned, 4096, 100_000),
            Err(MembindError::NodeOutOfRange { node: 100_000 })
        ));
        assert!(try_bind_memory(aligned, 0, 0).is_ok());
    }

    #[test]
    fn binding_to_a_missing_node_fails_without_harm() {
        let len = 1 << 20;
        let mut buf = vec![0u8; len + 2 * page_bytes()];
        let (offset, ptr) = aligned_window(&mut buf, len);
        // Node 1000 exists on no test machine: the kernel says EINVAL (or EPERM under seccomp).
        let r = try_bind_memory(ptr, len, 1000);
        assert!(matches!(r, Err(MembindError::Mbind { .. })), "{r:?}");
        buf[offset..offset + len].fill(7);
        assert!(buf[offset..offset + len].iter().all(|&b| b == 7));
    }
}
