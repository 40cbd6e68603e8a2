//! `Error::MemlockTooLow`: registering more than RLIMIT_MEMLOCK allows is a
//! typed error that names the limit, not a bare ENOMEM.
//!
//! Its own test binary because it lowers the process's soft limit. Root's
//! CAP_IPC_LOCK lifts the limit, so with that capability the test reports
//! why it did not run; `ci/rdma-stage.sh` runs it in the VM under
//! `setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock`, where it must
//! print `memlock: MemlockTooLow`.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use blitx_verbs::{Access, Context, Error, OwnedRegion, ProtectionDomain};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Bit 14 of the effective capability set (`CapEff` in /proc/self/status).
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << CAP_IPC_LOCK) != 0
}

fn say(line: &str) {
    // the stderr handle directly: libtest captures `eprintln!` of passing tests
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn registering_past_the_memlock_limit_is_memlock_too_low() {
    let ctx = match Context::open_first_active() {
        Ok(ctx) => ctx,
        Err(e) if e.is_unavailable() => {
            if std::env::var("BLIT_RDMA_REQUIRE").is_ok_and(|v| v == "1") {
                panic!("memlock: RDMA required (BLIT_RDMA_REQUIRE=1) but unavailable: {e:?}");
            }
            say(&format!("memlock: SKIPPED: no usable RDMA device: {e} [{e:?}]"));
            return;
        }
        Err(e) => panic!("memlock: opening the device failed: {e:?}"),
    };
    if has_cap_ipc_lock() {
        say("memlock: SKIPPED: this process has CAP_IPC_LOCK, which lifts RLIMIT_MEMLOCK \
             (run it under setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)");
        return;
    }
    const LIMIT_BYTES: u64 = 1 << 20;
    let old = getrlimit(Resource::Memlock);
    // lowering the soft limit needs no privilege
    setrlimit(Resource::Memlock, Rlimit { current: Some(LIMIT_BYTES), maximum: old.maximum })
        .unwrap();
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let err = OwnedRegion::new(&pd, 16 << 20, Access::LOCAL_WRITE).unwrap_err();
    match &err {
        Error::MemlockTooLow { requested_bytes, limit_bytes, .. } => {
            assert_eq!((*requested_bytes, *limit_bytes), (16 << 20, LIMIT_BYTES));
        }
        other => panic!("expected MemlockTooLow, got {other:?}"),
    }
    say(&format!("memlock: MemlockTooLow as expected: {err}"));
}
