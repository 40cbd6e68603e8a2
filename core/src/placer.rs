//! Where a transfer's worker threads run and its buffer pools live: the hook between the crates
//! that create workers and pools (storage, transports) and the one that knows the machine
//! (`blitx-topology`, which implements [`Placer`] with hwloc).
//!
//! Owns the hook and how it travels: a [`Placer`] is *entered* on a thread
//! ([`enter`]: the main thread of `blit xfer`, a daemon session's thread), and the threads that
//! thread creates through [`worker`] or [`inherit`] carry it on, the way the kernel carries a
//! thread's CPU affinity and memory policy to its children. It must not decide anything: which
//! CPU a worker gets and which node a pool goes to is the placer's business.
//!
//! Why ambient rather than a field in every config: the workers of one transfer are spawned in
//! a dozen places in four crates, the daemon runs several sessions with different placements at
//! once, and each session's threads descend from its own session thread. A thread-local
//! carried along the spawn tree gives every session its own placement with one line per spawn
//! site and no config field in the storage and transport crates (which must not depend on
//! hwloc). Without an entered placer every call here is a no-op, which is what `--numa off`
//! and "no NUMA node to follow" mean.

use std::cell::{RefCell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// What a worker thread does; names the thread and tells the placer what it is pinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerRole {
    /// Reads files into pool slots (source side).
    Reader,
    /// Writes pool slots into files (target side).
    Writer,
    /// Sends frames on one TCP stream.
    TcpSend,
    /// Receives frames on one TCP stream.
    TcpReceive,
    /// Posts RDMA writes and polls their completions.
    RdmaSend,
    /// Polls the RDMA receive completion queue.
    RdmaReceive,
    /// Returns RDMA credits to the sender.
    RdmaCredit,
}

impl WorkerRole {
    /// A short name: thread names (`blit-reader`) and logs.
    pub fn name(self) -> &'static str {
        match self {
            WorkerRole::Reader => "reader",
            WorkerRole::Writer => "writer",
            WorkerRole::TcpSend => "tcp-send",
            WorkerRole::TcpReceive => "tcp-recv",
            WorkerRole::RdmaSend => "rdma-send",
            WorkerRole::RdmaReceive => "rdma-recv",
            WorkerRole::RdmaCredit => "rdma-credit",
        }
    }
}

impl fmt::Display for WorkerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Places a transfer's workers and buffers. Both methods are best effort: a placement that
/// cannot be applied is logged by the implementation and the transfer goes on.
pub trait Placer: Send + Sync + fmt::Debug {
    /// Called first thing on a new worker thread (on that thread): pin it.
    fn worker_started(&self, role: WorkerRole);

    /// Called on a buffer pool's fresh mapping, before any page of it is touched or registered
    /// with an RDMA device: bind it to the placement's node. `region` is `UnsafeCell` bytes
    /// because the pool's slots are written through raw pointers by lease holders; the placer
    /// may only pass the address range on to the kernel, never read or write it.
    fn bind_region(&self, region: &[UnsafeCell<u8>]);
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<dyn Placer>>> = const { RefCell::new(None) };
}

/// The placer entered on this thread; restores the previous one when dropped. Not `Send`: it
/// restores the thread-local of the thread that created it.
#[must_use = "the placer is left again when this guard is dropped"]
pub struct Entered {
    previous: Option<Arc<dyn Placer>>,
    _this_thread: PhantomData<*const ()>,
}

impl fmt::Debug for Entered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entered").field("previous", &self.previous).finish()
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Makes `placer` this thread's placer until the guard is dropped (`None`: no placement).
pub fn enter(placer: Option<Arc<dyn Placer>>) -> Entered {
    let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), placer));
    Entered { previous, _this_thread: PhantomData }
}

/// This thread's placer, if one was entered (or inherited).
pub fn current() -> Option<Arc<dyn Placer>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Wraps the body of a worker thread: call it on the spawning thread, hand the result to
/// `spawn`. The new thread takes the spawner's placer, is named `blit-<role>` unless the
/// spawner named it, and is pinned by the placer before `f` runs.
///
/// ```
/// use blitx_core::placer::{WorkerRole, worker};
/// let n = std::thread::scope(|s| s.spawn(worker(WorkerRole::Reader, || 2 + 2)).join());
/// assert_eq!(n.ok(), Some(4));
/// ```
pub fn worker<F, R>(role: WorkerRole, f: F) -> impl FnOnce() -> R + Send
where
    F: FnOnce() -> R + Send,
{
    let placer = current();
    move || {
        if std::thread::current().name().is_none() {
            name_this_thread(role);
        }
        let _entered = enter(placer.clone());
        if let Some(p) = &placer {
            p.worker_started(role);
        }
        f()
    }
}

/// Wraps the body of a thread that is not a worker itself but creates workers or pools (a
/// session half, a set-up thread): it takes the spawner's placer and pins nothing.
pub fn inherit<F, R>(f: F) -> impl FnOnce() -> R + Send
where
    F: FnOnce() -> R + Send,
{
    let placer = current();
    move || {
        let _entered = enter(placer);
        f()
    }
}

/// Binds a fresh pool region with this thread's placer, if any (see [`Placer::bind_region`]).
pub(crate) fn bind_new_region(region: &[UnsafeCell<u8>]) {
    if let Some(p) = current() {
        p.bind_region(region);
    }
}

/// `comm` of the calling thread (what `ps -L` and `/proc/PID/task/TID/comm` show). Best
/// effort: a name that cannot be set leaves the inherited one.
fn name_this_thread(role: WorkerRole) {
    let mut name = [0u8; 16];
    let text = format!("blit-{}", role.name());
    let n = text.len().min(15);
    name[..n].copy_from_slice(&text.as_bytes()[..n]);
    if let Ok(c) = std::ffi::CStr::from_bytes_until_nul(&name) {
        let _ = rustix::thread::set_name(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recorder {
        started: Mutex<Vec<(WorkerRole, Option<String>)>>,
        regions: Mutex<Vec<(usize, usize)>>,
    }

    impl Placer for Recorder {
        fn worker_started(&self, role: WorkerRole) {
            let comm = std::fs::read_to_string("/proc/thread-self/comm").ok();
            self.started.lock().unwrap().push((role, comm.map(|c| c.trim_end().to_owned())));
        }
        fn bind_region(&self, region: &[UnsafeCell<u8>]) {
            self.regions.lock().unwrap().push((region.as_ptr() as usize, region.len()));
        }
    }

    #[test]
    fn workers_see_the_spawners_placer_and_nested_threads_inherit_it() {
        let rec = Arc::new(Recorder::default());
        let placer: Arc<dyn Placer> = rec.clone();
        {
            let _entered = enter(Some(placer));
            std::thread::scope(|s| {
                s.spawn(worker(WorkerRole::Reader, || ())).join().unwrap();
                // A session half spawns the writers: the placer travels two levels down.
                s.spawn(inherit(|| {
                    std::thread::scope(|s2| {
                        s2.spawn(worker(WorkerRole::Writer, || ())).join().unwrap();
                    });
                }))
                .join()
                .unwrap();
                // A plain spawn does not carry it.
                s.spawn(|| assert!(current().is_none())).join().unwrap();
            });
        }
        assert!(current().is_none(), "leaving restores the previous (none)");
        let started = rec.started.lock().unwrap().clone();
        assert_eq!(
            started,
            vec![
                (WorkerRole::Reader, Some("blit-reader".to_owned())),
                (WorkerRole::Writer, Some("blit-writer".to_owned())),
            ]
        );
    }

    #[test]
    fn a_named_thread_keeps_its_name() {
        let rec = Arc::new(Recorder::default());
        let _entered = enter(Some(rec.clone() as Arc<dyn Placer>));
        std::thread::Builder::new()
            .name("blit-tcp-tx0".into())
            .spawn(worker(WorkerRole::TcpSend, || ()))
            .unwrap()
            .join()
            .unwrap();
        let started = rec.started.lock().unwrap().clone();
        assert_eq!(started, vec![(WorkerRole::TcpSend, Some("blit-tcp-tx0".to_owned()))]);
    }

    #[test]
    fn without_a_placer_nothing_is_called() {
        assert!(current().is_none());
        let r = std::thread::spawn(worker(WorkerRole::Reader, || current().is_none()));
        assert!(r.join().unwrap());
    }

    #[test]
    fn pools_are_bound_while_a_placer_is_entered() {
        let rec = Arc::new(Recorder::default());
        let pool = {
            let _entered = enter(Some(rec.clone() as Arc<dyn Placer>));
            crate::pool::BufferPool::new(4, 8192, false).unwrap()
        };
        let _unbound = crate::pool::BufferPool::new(4, 8192, false).unwrap();
        let regions = rec.regions.lock().unwrap().clone();
        let (base, len) = pool.region();
        assert_eq!(regions, vec![(base as usize, len)]);
    }
}
