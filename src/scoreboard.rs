//! The shared-memory scoreboard: one cache-line slot per worker, mapped by the master
//! before any fork, written by the worker with relaxed atomics (no syscall per
//! request), read by the master for timeouts and status.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Most workers a master can run at once.
pub const MAX_SLOTS: usize = 1024;

/// What a worker is doing, as stored in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    Free = 0,
    Booting = 1,
    Idle = 2,
    Busy = 3,
    Stopping = 4,
}

#[repr(C, align(64))]
pub struct Slot {
    pub pid: AtomicI32,
    pub state: AtomicU32,
    pub requests: AtomicU64,
    /// Monotonic milliseconds when the request in flight started; 0 when idle.
    pub request_started_ms: AtomicU64,
    /// Monotonic milliseconds of the worker loop's last turn.
    pub heartbeat_ms: AtomicU64,
}

impl Slot {
    pub fn set_state(&self, s: WorkerState) {
        self.state.store(s as u32, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    pub fn request_begin(&self) {
        self.request_started_ms
            .store(monotonic_ms().max(1), Ordering::Relaxed);
    }

    pub fn request_end(&self) {
        self.request_started_ms.store(0, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn reset(&self, pid: i32) {
        self.pid.store(pid, Ordering::Relaxed);
        self.set_state(if pid == 0 {
            WorkerState::Free
        } else {
            WorkerState::Booting
        });
        self.requests.store(0, Ordering::Relaxed);
        self.request_started_ms.store(0, Ordering::Relaxed);
        self.heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }
}

/// The mapping. Created once in the master; children inherit it across fork.
pub struct Scoreboard {
    base: NonNull<Slot>,
}

impl Scoreboard {
    pub fn new() -> nix::Result<Scoreboard> {
        let len = NonZeroUsize::new(MAX_SLOTS * std::mem::size_of::<Slot>()).expect("non-zero");
        // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid `Slot`
        // (all fields are atomics of integers). It is never unmapped, so references
        // handed out live as long as the process.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
            )?
        };
        Ok(Scoreboard { base: ptr.cast() })
    }

    pub fn slot(&self, i: usize) -> &'static Slot {
        assert!(i < MAX_SLOTS);
        // SAFETY: `i` is in bounds of the mapping, which is never unmapped.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// Claims a free slot for a new worker (pid filled in after fork).
    pub fn claim(&self, used: impl Fn(usize) -> bool) -> Option<usize> {
        let i = (0..MAX_SLOTS).find(|&i| !used(i))?;
        self.slot(i).reset(-1);
        Some(i)
    }

    pub fn assign(&self, i: usize, pid: i32) {
        self.slot(i).pid.store(pid, Ordering::Relaxed);
    }

    pub fn release(&self, i: usize) {
        self.slot(i).reset(0);
    }
}

/// CLOCK_MONOTONIC in milliseconds: comparable across processes on one machine.
pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}
