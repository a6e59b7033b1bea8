//! The shared-memory scoreboard: one cache-line slot per worker, mapped by the master
//! before any fork, written by the worker with relaxed atomics (no syscall per
//! request), read by the master for timeouts and status, and by the workers to share
//! new connections out evenly (`Peers`). Each slot also tallies its responses by
//! status class and duration (`Tally`) for the master's `/metrics`.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

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
    /// Monotonic milliseconds since the application has been running a request
    /// without a pause (see `worker::abort::Lanes`); 0 when no request is inside it.
    pub request_started_ms: AtomicU64,
    /// Monotonic milliseconds of the worker loop's last turn.
    pub heartbeat_ms: AtomicU64,
    /// Client connections the worker holds open.
    pub connections: AtomicU32,
    /// Requests the worker has begun and not yet finished (all threads).
    pub in_flight: AtomicU32,
    /// Connections the worker has accepted since it started.
    pub accepted: AtomicU64,
    /// `accept` calls that failed for want of a resource (`EMFILE`, `ENFILE`...).
    pub accept_errors: AtomicU32,
    /// The errno of the last such failure while it lasts; 0 once an accept works.
    pub accept_errno: AtomicI32,
    /// Set by the master: `CLOSE_ALL` during a shutdown delay, each response closing
    /// its connection (`Connection: close`, HTTP/2 GOAWAY) while the worker keeps
    /// accepting; `STOP_ALL` the same once the whole server stops; otherwise how many connections autoscaling's rebalancing asks it to
    /// end that way (`take_close` counts them down).
    pub closing: AtomicU32,
    /// Responses by status class and duration, for `/metrics` (its own cache lines:
    /// peers read the line above).
    pub tally: Tally,
    /// An ASGI worker's loop: microseconds spent waiting in its selector, for
    /// autoscaling (counted only when it is on; non-zero once counting), and since
    /// when (`monotonic_us`) it has been waiting there now (0: it is not).
    pub loop_idle_us: AtomicU64,
    pub loop_waiting_since_us: AtomicU64,
}

/// `Slot::closing` when every connection is to close after its response.
pub const CLOSE_ALL: u32 = u32::MAX;
/// `Slot::closing` once the whole server stops gracefully: every connection closes, as
/// under `CLOSE_ALL`, and no other process will serve the listeners after this one, so
/// a stopping worker takes the clients waiting in their backlog before it exits
/// (`worker::EventLoop`'s `take_the_backlog`).
pub const STOP_ALL: u32 = u32::MAX - 1;

/// Upper bounds of the request-duration histogram's buckets, in microseconds
/// (Prometheus's default buckets, 5 ms to 10 s); one more bucket holds the rest.
pub const DURATION_BOUNDS_US: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// A worker's responses since it started: counts by status class (1xx..5xx), and a
/// duration histogram (per bucket, not cumulative) with its sum.
#[repr(C, align(64))]
pub struct Tally {
    pub by_class: [AtomicU64; 5],
    pub duration_buckets: [AtomicU64; DURATION_BOUNDS_US.len() + 1],
    pub duration_sum_us: AtomicU64,
}

impl Tally {
    /// One response sent: three relaxed additions on the worker's own cache lines.
    pub fn record(&self, status: u16, elapsed_us: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let bucket = DURATION_BOUNDS_US
            .iter()
            .position(|&bound| elapsed_us <= bound)
            .unwrap_or(DURATION_BOUNDS_US.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(elapsed_us, Ordering::Relaxed);
    }

    fn reset(&self) {
        let all = self.by_class.iter().chain(&self.duration_buckets);
        for counter in all.chain(std::iter::once(&self.duration_sum_us)) {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

impl Slot {
    pub fn set_state(&self, s: WorkerState) {
        self.state.store(s as u32, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// The loop's turn at `at` (a time it has read anyway: no second clock read).
    pub fn heartbeat_at(&self, at: Instant) {
        self.heartbeat_ms.store(ms_at(at), Ordering::Relaxed);
    }

    pub fn request_begin(&self) {
        self.request_started_ms
            .store(monotonic_ms().max(1), Ordering::Relaxed);
    }

    pub fn request_end(&self) {
        self.clock_stop();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// No request is inside the application (a response may still be on its way).
    pub fn clock_stop(&self) {
        self.request_started_ms.store(0, Ordering::Relaxed);
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
        self.connections.store(0, Ordering::Relaxed);
        self.in_flight.store(0, Ordering::Relaxed);
        self.accepted.store(0, Ordering::Relaxed);
        self.accept_errors.store(0, Ordering::Relaxed);
        self.accept_errno.store(0, Ordering::Relaxed);
        self.closing.store(0, Ordering::Relaxed);
        self.loop_idle_us.store(0, Ordering::Relaxed);
        self.loop_waiting_since_us.store(0, Ordering::Relaxed);
        self.tally.reset();
    }

    /// Whether this response is to end its connection: always under `CLOSE_ALL` (and
    /// `STOP_ALL`);
    /// otherwise while the rebalancing budget lasts, each yes taking one from it (a
    /// lost race with another thread is a no, which only keeps a connection open).
    pub fn take_close(&self) -> bool {
        let n = self.closing.load(Ordering::Relaxed);
        n != 0
            && (n >= STOP_ALL
                || self
                    .closing
                    .compare_exchange(n, n - 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
    }

    /// Some connections are to end after their response (`take_close` may say yes).
    pub fn close_pending(&self) -> bool {
        self.closing.load(Ordering::Relaxed) != 0
    }

    /// An `accept` failed for want of `errno` (descriptors, memory): the master logs
    /// the episode's start and end, so the worker need not log each retry.
    pub fn accept_failed(&self, errno: i32) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
        self.accept_errno.store(errno, Ordering::Relaxed);
    }

    /// An `accept` got a descriptor (a connection, or none waiting): any episode of
    /// failures is over for this worker.
    pub fn accept_worked(&self) {
        if self.accept_errno.load(Ordering::Relaxed) != 0 {
            self.accept_errno.store(0, Ordering::Relaxed);
        }
    }

    /// Accepting new connections (booted and not stopping).
    fn accepting(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        self.pid.load(Ordering::Relaxed) > 0
            && (state == WorkerState::Idle as u32 || state == WorkerState::Busy as u32)
    }
}

/// Ahead of the slots: how many slots have ever been claimed, so that readers scan
/// only those.
#[repr(C, align(64))]
struct Header {
    claimed_bound: AtomicU32,
}

/// The mapping. Created once in the master; children inherit it across fork. A copy
/// is another handle on the same mapping.
#[derive(Clone, Copy)]
pub struct Scoreboard {
    header: NonNull<Header>,
    base: NonNull<Slot>,
}

// SAFETY: the mapping is never unmapped and is only accessed through atomics.
unsafe impl Send for Scoreboard {}
// SAFETY: as above.
unsafe impl Sync for Scoreboard {}

impl Scoreboard {
    pub fn new() -> nix::Result<Scoreboard> {
        let len = NonZeroUsize::new(
            std::mem::size_of::<Header>() + MAX_SLOTS * std::mem::size_of::<Slot>(),
        )
        .expect("non-zero");
        // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid `Header`
        // and `Slot` (all fields are atomics of integers). It is never unmapped, so
        // references handed out live as long as the process.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
            )?
        };
        let header = ptr.cast::<Header>();
        // SAFETY: the slots follow the header inside the mapping; both are 64-aligned.
        let base = unsafe { NonNull::new_unchecked(header.as_ptr().add(1).cast::<Slot>()) };
        Ok(Scoreboard { header, base })
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
        self.header()
            .claimed_bound
            .fetch_max(i as u32 + 1, Ordering::Relaxed);
        Some(i)
    }

    pub fn assign(&self, i: usize, pid: i32) {
        self.slot(i).pid.store(pid, Ordering::Relaxed);
    }

    pub fn release(&self, i: usize) {
        self.slot(i).reset(0);
    }

    /// Slots ever claimed: readers need look no further.
    pub fn claimed_bound(&self) -> usize {
        (self.header().claimed_bound.load(Ordering::Relaxed) as usize).min(MAX_SLOTS)
    }

    fn header(&self) -> &'static Header {
        // SAFETY: the header is at the start of the mapping, which is never unmapped.
        unsafe { self.header.as_ref() }
    }
}

/// A worker's view of the other workers of its master, to share new connections out:
/// with EPOLLEXCLUSIVE the kernel wakes whichever worker is asleep, and one that
/// accepted a whole burst would serve its clients more slowly than its peers serve
/// theirs for as long as those connections live.
#[derive(Clone, Copy)]
pub struct Peers {
    board: Scoreboard,
    own: usize,
}

impl Peers {
    pub fn new(board: Scoreboard, own: usize) -> Peers {
        Peers { board, own }
    }

    /// The fewest connections held by another accepting worker; None when alone.
    pub fn fewest_connections(&self) -> Option<u32> {
        self.others()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .min()
    }

    /// Whether every other accepting worker holding the fewest connections is inside
    /// a request: with `--threads 1` such a worker accepts nothing until it is done.
    pub fn emptiest_are_busy(&self) -> bool {
        let Some(fewest) = self.fewest_connections() else {
            return false;
        };
        self.others()
            .filter(|s| s.connections.load(Ordering::Relaxed) == fewest)
            .all(|s| s.state.load(Ordering::Relaxed) == WorkerState::Busy as u32)
    }

    /// Connections the other accepting workers have accepted in all.
    pub fn accepted(&self) -> u64 {
        self.others()
            .map(|s| s.accepted.load(Ordering::Relaxed))
            .sum()
    }

    fn others(&self) -> impl Iterator<Item = &'static Slot> + '_ {
        (0..self.board.claimed_bound())
            .filter(|&i| i != self.own)
            .map(|i| self.board.slot(i))
            .filter(|s| s.accepting())
    }
}

/// `monotonic_ms` at the moment `at` without reading the clock: `Instant` is
/// CLOCK_MONOTONIC too, so one pair of readings taken per process maps one onto the
/// other (to the millisecond). The request path reads the clock once per event.
pub fn ms_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();
    let (instant, ms) = *EPOCH.get_or_init(|| (Instant::now(), monotonic_ms()));
    match at.checked_duration_since(instant) {
        Some(later) => ms + later.as_millis() as u64,
        None => ms.saturating_sub(instant.duration_since(at).as_millis() as u64),
    }
}

/// CLOCK_MONOTONIC in microseconds: comparable across processes on one machine.
pub fn monotonic_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000
}

/// CLOCK_MONOTONIC in milliseconds: comparable across processes on one machine.
pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ms_at_is_on_the_monotonic_ms_scale() {
        let before = monotonic_ms();
        let now = ms_at(Instant::now());
        let after = monotonic_ms();
        assert!(
            before <= now + 1 && now <= after + 1,
            "{before} {now} {after}"
        );
        let later = Instant::now() + Duration::from_millis(1500);
        assert_eq!(
            ms_at(later) - ms_at(later - Duration::from_millis(1500)),
            1500
        );
    }
}
