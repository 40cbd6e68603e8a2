//! Regression guard for the "starts without libibverbs" property: a binary
//! that links the verbs crate must not list libibverbs (or librdmacm) in its ELF
//! `DT_NEEDED` entries. `rdma-sys`'s build script asks the linker for
//! `-libverbs -lrdmacm`; only `--as-needed` plus "no exported symbol is
//! referenced" keeps them out, and a single direct call would bring them back.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;

use blitx_verbs::{
    CompletionQueue, Context, MemoryRegion, OwnedRegion, ProtectionDomain, QueuePair, discover,
};

fn u16_at(b: &[u8], off: usize) -> usize {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap()) as usize
}
fn u32_at(b: &[u8], off: usize) -> usize {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The `DT_NEEDED` names of a little-endian ELF64 file (what `readelf -d`
/// shows as "Shared library: [...]").
fn needed_libraries(path: &Path) -> Vec<String> {
    const SHT_DYNAMIC: usize = 6;
    const DT_NEEDED: u64 = 1;
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!((elf[4], elf[5]), (2, 1), "only ELF64 little-endian is handled");
    let shoff = u64_at(&elf, 0x28) as usize;
    let shentsize = u16_at(&elf, 0x3a);
    let shnum = u16_at(&elf, 0x3c);
    let section = |i: usize| &elf[shoff + i * shentsize..shoff + (i + 1) * shentsize];
    let mut names = Vec::new();
    for i in 0..shnum {
        let sh = section(i);
        if u32_at(sh, 4) != SHT_DYNAMIC {
            continue;
        }
        let (offset, size) = (u64_at(sh, 24) as usize, u64_at(sh, 32) as usize);
        let strtab = section(u32_at(sh, 40));
        let str_offset = u64_at(strtab, 24) as usize;
        for entry in elf[offset..offset + size].chunks_exact(16) {
            if u64_at(entry, 0) == DT_NEEDED {
                let start = str_offset + u64_at(entry, 8) as usize;
                let end = start + elf[start..].iter().position(|&c| c == 0).unwrap();
                names.push(String::from_utf8_lossy(&elf[start..end]).into_owned());
            }
        }
    }
    names
}

fn assert_no_verbs_needed(path: &Path) {
    let needed = needed_libraries(path);
    // a parser that finds nothing would make the check vacuous
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "{}: no libc in DT_NEEDED {needed:?}; ELF parsing is broken",
        path.display()
    );
    for lib in &needed {
        assert!(
            !lib.contains("ibverbs") && !lib.contains("rdmacm"),
            "{} needs {lib} (DT_NEEDED {needed:?}); a libibverbs symbol is referenced directly \
             instead of through the dlopen table in src/sys.rs",
            path.display()
        );
    }
    println!("{}: DT_NEEDED {needed:?}", path.display());
}

#[test]
fn test_binary_does_not_need_libibverbs() {
    // Keep the whole FFI surface reachable from this binary, so --gc-sections
    // cannot hide a direct reference.
    black_box(discover as fn() -> _);
    black_box(Context::open as fn(&str) -> _);
    black_box(ProtectionDomain::new as fn(&_) -> _);
    black_box(CompletionQueue::new as fn(&_, u32, _) -> _);
    black_box(QueuePair::create_rc as fn(&_, &_, &_, &_) -> _);
    black_box(QueuePair::post_write_with_imm as fn(&_, &[_]) -> _);
    black_box(QueuePair::post_writes as fn(&_, &[_]) -> _);
    black_box(QueuePair::post_sends as fn(&_, &[_]) -> _);
    black_box(QueuePair::post_recv as fn(&_, &[_]) -> _);
    black_box(QueuePair::connect as fn(&mut _, &_) -> _);
    black_box(CompletionQueue::poll_wait as fn(&_, &mut [_], _) -> _);
    black_box(CompletionQueue::poll_wait_until as fn(&_, &mut [_], _) -> _);
    black_box(OwnedRegion::new as fn(&_, usize, _) -> _);
    black_box(MemoryRegion::remote as fn(&_) -> _);
    let _ = black_box(discover());
    assert_no_verbs_needed(&std::env::current_exe().unwrap());
}
