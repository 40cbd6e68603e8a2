//! Thread-pinning shell: applies a [`Placement`]'s CPU set to the calling thread with hwloc.
//!
//! Owns the process-wide hwloc topology used for binding (loaded once, on first use) and
//! nothing else. Pinning is best effort by contract: a failure is logged and reported as
//! `false`, and the thread keeps running where it was — a transfer never fails because a
//! thread could not be pinned. It must not decide where to pin (`placement.rs` does).

use std::sync::OnceLock;

use hwlocality::cpu::binding::CpuBindingFlags;

use crate::discover::{cpuset_from, load_synthetic, load_system};
use crate::error::TopologyError;
use crate::model::cpu_list;
use crate::placement::Placement;

/// An hwloc topology kept for binding. Loading one costs milliseconds, so a process keeps
/// one (see [`pin_current_thread`]) rather than loading it per thread.
pub struct Binder {
    hw: hwlocality::Topology,
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder").field("this_system", &self.hw.is_this_system()).finish()
    }
}

impl Binder {
    /// A binder for this machine.
    pub fn system() -> Result<Self, TopologyError> {
        Ok(Binder { hw: load_system()? })
    }

    /// A binder over a synthetic topology: hwloc accepts the calls and binds nothing, which
    /// lets tests run the pinning path without touching the test runner's threads.
    pub fn synthetic(description: &str) -> Result<Self, TopologyError> {
        Ok(Binder { hw: load_synthetic(description)? })
    }

    /// Pins the calling thread to `placement.cpus`. Returns whether it worked; on failure
    /// logs a warning and leaves the thread's affinity as it was.
    pub fn pin_current_thread(&self, placement: &Placement) -> bool {
        if placement.cpus.is_empty() {
            tracing::warn!("not pinning: the placement has no CPUs ({})", placement.reason);
            return false;
        }
        let set = cpuset_from(&placement.cpus);
        match self.hw.bind_cpu(&set, CpuBindingFlags::THREAD) {
            Ok(()) => {
                tracing::debug!(cpus = %cpu_list(&placement.cpus), "pinned thread");
                true
            }
            Err(e) => {
                tracing::warn!(
                    "pinning this thread to CPUs {} failed ({e}); it keeps its current affinity",
                    cpu_list(&placement.cpus)
                );
                false
            }
        }
    }

    /// The CPUs the calling thread may run on now, sorted; `None` if hwloc cannot say.
    pub fn current_thread_cpus(&self) -> Option<Vec<u32>> {
        let set = self.hw.cpu_binding(CpuBindingFlags::THREAD).ok()?;
        set.weight()?;
        set.iter_set().map(|i| u32::try_from(usize::from(i)).ok()).collect()
    }
}

/// The process-wide binder for this machine; `None` (logged once) if hwloc cannot load.
fn system_binder() -> Option<&'static Binder> {
    static SYSTEM: OnceLock<Option<Binder>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| match Binder::system() {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("thread pinning disabled: {e}");
                None
            }
        })
        .as_ref()
}

/// Pins the calling thread to `placement.cpus` (hwloc thread CPU binding). Call it first
/// thing in each transport/storage worker thread. Best effort: returns whether it worked,
/// and on failure logs a warning and continues unpinned.
pub fn pin_current_thread(placement: &Placement) -> bool {
    system_binder().is_some_and(|b| b.pin_current_thread(placement))
}

/// The CPUs the calling thread may run on now (for `--profile` output and tests).
pub fn current_thread_cpus() -> Option<Vec<u32>> {
    system_binder()?.current_thread_cpus()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(cpus: Vec<u32>) -> Placement {
        Placement { node: None, cpus, reason: "test".to_owned() }
    }

    #[test]
    fn pinning_moves_a_thread_and_back() {
        let before = current_thread_cpus().unwrap();
        let first = before[0];
        // A fresh thread, so the test runner's threads keep their affinity.
        let (pinned, during) = std::thread::spawn(move || {
            let ok = pin_current_thread(&placement(vec![first]));
            (ok, current_thread_cpus())
        })
        .join()
        .unwrap();
        assert!(pinned);
        assert_eq!(during, Some(vec![first]));
        let back = std::thread::spawn(move || {
            pin_current_thread(&placement(before.clone()));
            current_thread_cpus() == Some(before)
        })
        .join()
        .unwrap();
        assert!(back);
    }

    #[test]
    fn pinning_failure_is_reported_not_fatal() {
        // CPU 100000 exists on no machine this runs on; hwloc refuses it.
        let ok =
            std::thread::spawn(|| pin_current_thread(&placement(vec![100_000]))).join().unwrap();
        assert!(!ok);
        assert!(!pin_current_thread(&placement(Vec::new())));
    }

    #[test]
    fn synthetic_binding_is_a_no_op() {
        let b = Binder::synthetic("pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2").unwrap();
        let unchanged = std::thread::spawn(move || {
            let before = current_thread_cpus();
            let _ = b.pin_current_thread(&placement(vec![9]));
            current_thread_cpus() == before
        })
        .join()
        .unwrap();
        assert!(unchanged);
    }
}
