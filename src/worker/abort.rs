//! The end of a worker that timed out: the master sends SIGABRT when a request (or the
//! event loop) has been stuck longer than `--timeout`. A watcher thread, woken by the
//! signal, then
//! 1. answers each client whose request is inside the application and has had no byte
//!    of its response yet with a 500 and `Connection: close` (a client that already
//!    has part of its response can only see the connection close);
//! 2. logs `WORKER TIMEOUT` with each such request's method, path, client and age;
//! 3. logs every thread's Python stack with source lines (waiting a bounded time for
//!    the GIL; a thread stuck in C code holding it gets faulthandler's GIL-free dump);
//! 4. runs the `worker_abort` hook, and exits with status 1.
//!
//! Which requests are inside the application is kept in `Lanes`: one record per
//! thread that runs the application (the loop's with `--threads 1`, else each pool
//! thread's), written when it enters and leaves the application.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::{Service, Shared};
use crate::scoreboard::Slot;

/// How long the watcher waits for the GIL to format Python stacks.
const GIL_WAIT: Duration = Duration::from_millis(800);
/// The answer to a request whose worker timed out.
const TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 21\r\n\r\nInternal Server Error";

/// The write end of the watcher's pipe, for the signal handler.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// One thread's record. Leaving the application only clears `fd` (no lock on the
/// way out); entering writes the record and then `fd` under the lock, so a reader
/// holding the lock sees a record that belongs to the `fd` it reads.
struct LaneSlot {
    /// The client socket, or -1 when the lane's thread is outside the application.
    fd: AtomicI32,
    record: Mutex<Lane>,
}

/// A request inside the application.
struct Lane {
    /// Part of this response is already on the wire.
    on_wire: bool,
    since: Instant,
    /// `METHOD target`.
    what: Vec<u8>,
    client: String,
    /// The thread inside the application (pthread_self, which is Python's
    /// `threading.get_ident()`), to name its request beside its stack.
    thread: u64,
}

/// A request inside the application, as `rgunctl stack` and the time-out log show it.
pub struct InsideRequest {
    pub thread: u64,
    /// `METHOD target`.
    pub what: String,
    pub client: String,
    pub age: Duration,
}

/// One record per thread that runs the application, how many are inside it, and the
/// worker's scoreboard slot, whose clock the master's `--timeout` reads.
pub struct Lanes {
    lanes: Vec<LaneSlot>,
    inside: AtomicUsize,
    board: &'static Slot,
}

impl Lanes {
    pub fn new(threads: usize, board: &'static Slot) -> Lanes {
        let lanes = (0..threads.max(1))
            .map(|_| LaneSlot {
                fd: AtomicI32::new(-1),
                record: Mutex::new(Lane {
                    on_wire: false,
                    since: Instant::now(),
                    what: Vec::new(),
                    client: String::new(),
                    thread: 0,
                }),
            })
            .collect();
        Lanes {
            lanes,
            inside: AtomicUsize::new(0),
            board,
        }
    }

    /// Thread `lane` calls the application for the request `what` of `client` on
    /// `fd`, begun at `since`; `on_wire` when part of the response is already sent.
    ///
    /// The scoreboard's clock runs while some thread is inside the application, and
    /// starts again when one comes out (progress). A response waiting for a slow
    /// client is not the application's time: its connection's deadline bounds it.
    pub fn enter(
        &self,
        lane: usize,
        fd: RawFd,
        on_wire: bool,
        since: Instant,
        what: &[u8],
        client: &str,
    ) {
        if self.inside.fetch_add(1, Ordering::Relaxed) == 0 {
            self.board.request_begin();
        }
        if let Some(slot) = self.lanes.get(lane) {
            let mut l = slot.record.lock().unwrap_or_else(|e| e.into_inner());
            l.on_wire = on_wire;
            l.since = since;
            l.what.clear();
            l.what.extend_from_slice(what);
            l.client.clear();
            l.client.push_str(client);
            // SAFETY: pthread_self has no preconditions.
            l.thread = unsafe { libc::pthread_self() } as u64;
            slot.fd.store(fd, Ordering::Release);
        }
    }

    /// The requests inside the application now, with the threads running them.
    pub fn inside(&self) -> Vec<InsideRequest> {
        self.lanes
            .iter()
            .filter_map(|slot| {
                let l = slot.record.lock().unwrap_or_else(|e| e.into_inner());
                (slot.fd.load(Ordering::Acquire) >= 0).then(|| InsideRequest {
                    thread: l.thread,
                    what: String::from_utf8_lossy(&l.what).into_owned(),
                    client: l.client.clone(),
                    age: l.since.elapsed(),
                })
            })
            .collect()
    }

    pub fn leave(&self, lane: usize) {
        if let Some(slot) = self.lanes.get(lane) {
            slot.fd.store(-1, Ordering::Release);
        }
        if self.inside.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.board.clock_stop();
        } else {
            self.board.request_begin();
        }
    }
}

/// Installs the SIGABRT handler and starts the watcher thread. Call once the
/// interpreter is set up (faulthandler's handlers are in place: ours replaces its
/// SIGABRT one, and registers its dump on `DUMP_SIGNAL` for the fallback).
pub fn watch(py: Python<'_>, shared: Arc<Shared>, service: Arc<Service>) -> PyResult<()> {
    let dump_signal = dump_signal();
    py.import("faulthandler")?.call_method1(
        "register",
        (dump_signal, py.import("sys")?.getattr("stderr")?, true),
    )?;
    let (mut rx, tx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("rgun-abort".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            if matches!(rx.read(&mut byte), Ok(1)) {
                on_timeout(&shared, &service, dump_signal);
            }
        })?;
    // The write end lives as long as the process: the handler may write at any time.
    WAKE_FD.store(tx.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(tx);
    // SAFETY: `on_abort` only calls write(2), which is async-signal-safe; the action
    // struct is fully initialised; replacing faulthandler's SIGABRT action is the point.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_abort as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// The signal on which faulthandler dumps every thread's stack without the GIL.
fn dump_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_abort(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    // SAFETY: write(2) on our pipe is async-signal-safe; a full pipe just fails.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

fn on_timeout(shared: &Shared, service: &Arc<Service>, dump_signal: i32) -> ! {
    let pid = std::process::id();
    let mut any = false;
    for slot in &shared.lanes.lanes {
        let l = slot.record.lock().unwrap_or_else(|e| e.into_inner());
        let fd = slot.fd.load(Ordering::Acquire);
        if fd < 0 {
            continue;
        }
        any = true;
        if !l.on_wire {
            // SAFETY: the descriptor is the client socket of a request the application
            // holds; the process ends right after, so nothing else writes to it.
            unsafe {
                libc::send(
                    fd,
                    TIMEOUT_ANSWER.as_ptr().cast(),
                    TIMEOUT_ANSWER.len(),
                    libc::MSG_NOSIGNAL,
                );
                libc::shutdown(fd, libc::SHUT_WR);
            }
        }
        tracing::error!(
            "WORKER TIMEOUT (pid:{pid}) serving {} for {} ({:.1} s since the request began{})",
            String::from_utf8_lossy(&l.what),
            if l.client.is_empty() {
                "a local client"
            } else {
                &l.client
            },
            l.since.elapsed().as_secs_f64(),
            if l.on_wire {
                "; the response had begun, so the connection is closed"
            } else {
                "; answered 500"
            }
        );
    }
    if !any {
        tracing::error!("WORKER TIMEOUT (pid:{pid}): the event loop is blocked");
    }
    // Python stacks with source lines need the GIL; a thread stuck in C code may hold
    // it, so wait a bounded time, then fall back to faulthandler's dump.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let service = Arc::clone(service);
    let inside = shared.lanes.inside();
    let _ = std::thread::Builder::new()
        .name("rgun-stacks".into())
        .spawn(move || {
            Python::with_gil(|py| {
                match format_stacks(py, &inside) {
                    Ok(text) => tracing::error!("Stacks of worker {pid}:\n{text}"),
                    Err(e) => tracing::error!(
                        "cannot format stacks: {}",
                        crate::python::format_exception(py, &e)
                    ),
                }
                let _ = done_tx.send(());
                if let Some(h) = &service.hooks {
                    h.call(py, "worker_abort", Vec::new());
                }
                let _ = done_tx.send(());
            })
        });
    match done_rx.recv_timeout(GIL_WAIT) {
        Ok(()) => {
            // The worker_abort hook gets what is left of the master's grace.
            let _ = done_rx.recv_timeout(GIL_WAIT);
        }
        Err(_) => {
            tracing::error!("the GIL is held (stuck in C code?); faulthandler's dump follows");
            // SAFETY: raising a signal faulthandler handles; it writes and returns.
            unsafe { libc::raise(dump_signal) };
        }
    }
    // SAFETY: _exit ends the process at once, without running Python's or Rust's exit
    // handlers (threads are stuck; nothing must wait for them).
    unsafe { libc::_exit(1) }
}

/// Every thread's Python stack, innermost last, with source lines, each headed by
/// the request it serves (if any).
fn format_stacks(py: Python<'_>, inside: &[InsideRequest]) -> PyResult<String> {
    let text: Vec<String> = thread_stacks(py)?
        .into_iter()
        .map(|t| {
            let serving = inside
                .iter()
                .find(|r| r.thread == t.ident)
                .map(|r| format!(", serving {}", describe(r)))
                .unwrap_or_default();
            format!(
                "Thread {}{serving} (most recent call last):\n{}",
                t.name, t.stack
            )
        })
        .collect();
    Ok(text.join("\n"))
}

/// `GET /path for 127.0.0.1:5555 (2.0 s)`.
pub fn describe(r: &InsideRequest) -> String {
    format!(
        "{} for {} ({:.1} s)",
        r.what,
        if r.client.is_empty() {
            "a local client"
        } else {
            &r.client
        },
        r.age.as_secs_f64()
    )
}

/// One Python thread's stack.
pub struct ThreadStack {
    pub ident: u64,
    pub name: String,
    /// `traceback.format_stack`'s text: `File ..., line N, in f` and the source line.
    pub stack: String,
}

/// Every Python thread's stack but the calling thread's, with source lines. The GIL
/// is held, so the stacks are a consistent snapshot; the threads go on afterwards.
pub fn thread_stacks(py: Python<'_>) -> PyResult<Vec<ThreadStack>> {
    let code = cr"
import sys, threading, traceback
def _rgun_stacks():
    names = {t.ident: t.name for t in threading.enumerate()}
    return [(ident, str(names.get(ident, ident)), ''.join(traceback.format_stack(frame)))
            for ident, frame in sys._current_frames().items()
            if ident != threading.get_ident()]
";
    let globals = pyo3::types::PyDict::new(py);
    py.run(code, Some(&globals), None)?;
    let rows: Vec<(u64, String, String)> = globals
        .get_item("_rgun_stacks")?
        .expect("defined above")
        .call0()?
        .extract()?;
    Ok(rows
        .into_iter()
        .map(|(ident, name, stack)| ThreadStack { ident, name, stack })
        .collect())
}
