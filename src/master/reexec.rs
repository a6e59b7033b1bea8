//! `--preload` reloads: the master re-executes itself in place, so its pid never
//! changes (a container's PID 1, a supervisor or a shell's `wait` see the server run
//! throughout). The application lives in the master, so new code needs a new image.
//! This is the `Reloading` phase of `lifecycle`, carried across `execve`.
//!
//! The old image first reads the configuration file (one that cannot be read fails
//! the reload before anything changes), then hands over what outlives it in a memfd
//! `Handoff` (named by `REEXEC_ENV`) and in descriptors it leaves open: the listeners
//! (`upgrade::INHERIT_ENV`), the control socket and its client connections (with what
//! they had read and not yet been sent, and which reload each waits for). Its workers
//! stay its children across `execve`; the new image adopts them as the serving
//! generation, imports the application, boots the next generation and retires the
//! adopted one as any reload does. Every signal is blocked across `execve`; during the
//! import a stop (or the boot time-out's alarm) cuts it short (`guarded_import`), and
//! the rest wait for the master's own handlers. If the new image cannot import the
//! application, the reload fails with the traceback and the adopted workers keep
//! serving; a worker that replaces one of them then imports the application itself,
//! as without `--preload`. Invariant: nothing here forks.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::memfd::MemFdCreateFlag;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyCFunction;
use rgunctl::protocol::HistoryEntry;
use serde::{Deserialize, Serialize};

use super::metrics::Ledger;
use super::reload::{Reload, ReloadHandoff};
use super::upgrade::{GENERATION_ENV, INHERIT_ENV};
use super::{Arbiter, WorkerProc};
use crate::control::HandedConn;
use crate::worker::Preloaded;

/// Set in the re-executed image's environment: the descriptor of a memfd holding the
/// `Handoff` as JSON (a file, not the variable itself: the history's tracebacks can
/// exceed what one environment string may hold).
pub const REEXEC_ENV: &str = "RGUN_REEXEC";

/// What the old image leaves to the new one.
#[derive(Serialize, Deserialize)]
pub struct Handoff {
    /// The control socket's listening descriptor, left open.
    pub control_fd: Option<i32>,
    /// The control socket's client connections, some waiting for the reload.
    pub conns: Vec<HandedConn>,
    /// The workers, which stay this process's children.
    pub workers: Vec<Adopted>,
    /// The serving generation and its worker count.
    pub generation: u32,
    pub target: usize,
    /// The reload in progress.
    pub reload: ReloadHandoff,
    pub history: Vec<HistoryEntry>,
    pub started_at_unix: f64,
    pub uptime_ms: u64,
    /// spawned, exited, timeouts, reloads, requests (of exited workers, and of the
    /// live ones so far).
    pub totals: [u64; 5],
    /// `/metrics`' counters, with what the workers have counted so far folded in.
    pub ledger: Ledger,
}

#[derive(Serialize, Deserialize)]
pub struct Adopted {
    pub pid: i32,
    pub generation: u32,
    pub age: u64,
}

/// In a re-executed image: the handoff, read from the descriptor the environment
/// names (and closed).
pub fn take_handoff() -> Option<Handoff> {
    let fd: RawFd = std::env::var(REEXEC_ENV).ok()?.parse().ok()?;
    std::env::remove_var(REEXEC_ENV);
    // SAFETY: the old image left this descriptor open for us alone.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!("cannot read the re-execution handoff: {e}");
            None
        }
    }
}

/// The handoff in a memfd, for the new image.
fn handoff_file(handoff: &Handoff) -> Result<std::fs::File, String> {
    let json = serde_json::to_vec(handoff).map_err(|e| e.to_string())?;
    let fd = nix::sys::memfd::memfd_create(c"rgun-handoff", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| format!("memfd_create: {e}"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&json).map_err(|e| e.to_string())?;
    Ok(file)
}

/// Releases the signals blocked across `execve` (once the handlers are in place).
pub fn release_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// How a re-executed master goes on with the reload, after its import.
pub enum Then {
    /// Boot the new generation.
    Boot,
    /// Fail the reload: the import failed (the traceback).
    Fail(String),
    /// Nothing: a stop is pending.
    Hold,
}

/// What a re-executed master's import of the application came to.
pub enum Import {
    Done(Preloaded),
    /// The traceback (or why the import was cut short).
    Failed(String),
    /// A stop signal arrived during the import, which it cut short; the signal is
    /// pending again, for the loop to handle.
    Stopped,
}

/// The signals that cut a re-executed master's import short: a stop, and the alarm at
/// the boot time-out.
const CUTTING: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGALRM,
];

/// The signal that cut the import short (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// `--preload` in a re-executed master: the import runs with signals blocked (since
/// `execve`), so a stop would wait for it, and an import that hangs would hang the
/// master. Here TERM, INT and QUIT, and an alarm after `limit`, raise
/// `KeyboardInterrupt` inside it (a Python-level handler, run between bytecodes and
/// around blocking calls), so that a stop always stops and a hanging import fails the
/// reload. The other signals stay blocked until the master's own handlers exist.
pub fn guarded_import(
    limit: Duration,
    import: impl FnOnce() -> Result<Preloaded, String>,
) -> Import {
    let mut cutting = SigSet::empty();
    for sig in CUTTING {
        cutting.add(sig);
    }
    let armed = Python::with_gil(arm_handlers);
    if let Err(e) = &armed {
        tracing::warn!("the import cannot be cut short by a stop: {e}");
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&cutting), None);
    // SAFETY: alarm only sets this process's timer.
    unsafe { libc::alarm(limit.as_secs().max(1) as u32) };
    let result = import();
    // SAFETY: as above.
    unsafe { libc::alarm(0) };
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&cutting), None);
    Python::with_gil(disarm_handlers);
    match CAUGHT.swap(0, Ordering::Relaxed) {
        0 => match result {
            Ok(app) => Import::Done(app),
            Err(text) => Import::Failed(text),
        },
        libc::SIGALRM => Import::Failed(format!(
            "the application's import took longer than {} s\n{}",
            limit.as_secs(),
            result.err().unwrap_or_default()
        )),
        sig => {
            // Pending (blocked) until the master's handlers exist.
            let _ = nix::sys::signal::raise(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
            Import::Stopped
        }
    }
}

fn arm_handlers(py: Python<'_>) -> PyResult<()> {
    let handler = PyCFunction::new_closure(py, None, None, |args, _kwargs| -> PyResult<()> {
        let sig: i32 = args.get_item(0)?.extract()?;
        CAUGHT.store(sig, Ordering::Relaxed);
        Err(PyKeyboardInterrupt::new_err(format!(
            "rgun: signal {sig} during the import of the application"
        )))
    })?;
    let signal = py.import("signal")?;
    for sig in CUTTING {
        signal.call_method1("signal", (sig as i32, &handler))?;
    }
    Ok(())
}

/// Back to the default dispositions (the alarm's ignored: one that fired late must not
/// end the master), after running a Python handler still owed.
fn disarm_handlers(py: Python<'_>) {
    let _ = py.check_signals();
    let Ok(signal) = py.import("signal") else {
        return;
    };
    for sig in CUTTING {
        let disposition = if sig == Signal::SIGALRM {
            "SIG_IGN"
        } else {
            "SIG_DFL"
        };
        if let Ok(d) = signal.getattr(disposition) {
            let _ = signal.call_method1("signal", (sig as i32, d));
        }
    }
}

impl Arbiter {
    /// The old image's side: hand over and `execve`. Returns only on failure (with
    /// everything as it was).
    pub(super) fn reexec_for_reload(&mut self) -> Result<(), String> {
        // A `stack` request is not carried (its workers answer this image's pipes):
        // answered now with what came (its answer leaves with the connection).
        self.answer_stack_waiters_now();
        let Some(reload) = self.reload.as_ref() else {
            return Ok(());
        };
        let handoff = self.handoff(reload);
        let file = handoff_file(&handoff)?;
        let mut keep: Vec<i32> = self
            .listeners
            .iter()
            .map(|l| l.socket.as_raw_fd())
            .collect();
        keep.extend(handoff.control_fd);
        keep.extend(handoff.conns.iter().map(|c| c.fd));
        keep.push(file.as_raw_fd());
        let inherit: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("{}={}", l.socket.as_raw_fd(), l.display.replace(';', ",")))
            .collect();
        let start = crate::process::start_command();
        let mut argv: Vec<&std::ffi::OsStr> = vec![start.interpreter.as_os_str()];
        argv.extend(start.entry.iter().map(|a| a.as_os_str()));
        argv.extend(start.args.iter().skip(1).map(|a| a.as_os_str()));
        let argv = cstrings(argv.iter().map(|a| a.as_bytes()))?;
        let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
            .filter(|(k, _)| k != INHERIT_ENV && k != REEXEC_ENV && k != GENERATION_ENV)
            .collect();
        env.push((INHERIT_ENV.into(), inherit.join(";").into()));
        env.push((REEXEC_ENV.into(), file.as_raw_fd().to_string().into()));
        env.extend(
            self.notifier
                .env_for_reexec()
                .into_iter()
                .map(|(k, v)| (k.into(), v.into())),
        );
        let env_bytes: Vec<Vec<u8>> = env
            .iter()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        let envp = cstrings(env_bytes.iter().map(|e| e.as_slice()))?;
        self.call_hook("pre_exec", serde_json::json!({}));
        tracing::info!(
            "Re-executing the master (pid {}) to load the new code",
            std::process::id()
        );
        // The hook host is this image's; the new one starts its own (and reaps this).
        if let Some(h) = &self.hooks {
            let _ = kill(h.pid, Signal::SIGKILL);
        }
        // So is the dirty pool: the new image starts its own.
        self.end_dirty_for_exec();
        let error = exec_keeping(&keep, &argv, &envp);
        self.hooks = None;
        if let Err(e) = self.start_dirty() {
            tracing::error!("cannot restart the dirty pool: {e:#}");
        }
        Err(format!("cannot re-execute the master: {error}"))
    }

    fn handoff(&self, reload: &Reload) -> Handoff {
        let mut conns = self.control.as_ref().map_or(Vec::new(), |c| c.handover());
        let queued = self.queued_reload.as_ref().map(|q| &q.waiters);
        // A reload queued behind this one is carried by it: the new image imports
        // the code as it is after both were asked for.
        for (conn, id) in reload.waiters.iter().chain(queued.into_iter().flatten()) {
            if let Some((_, handed)) = conns.iter_mut().find(|(c, _)| c == conn) {
                handed.waiting.push(id.clone());
            }
        }
        for (conn, id, previous) in &self.scale_waiters {
            if let Some((_, handed)) = conns.iter_mut().find(|(c, _)| c == conn) {
                handed.scale_waiting.push((id.clone(), *previous));
            }
        }
        Handoff {
            control_fd: self.control.as_ref().map(|c| c.listener_fd()),
            conns: conns.into_iter().map(|(_, handed)| handed).collect(),
            workers: self
                .workers
                .values()
                .filter(|w| !w.retiring)
                .map(|w| Adopted {
                    pid: w.pid.as_raw(),
                    generation: w.generation,
                    age: w.age,
                })
                .collect(),
            generation: self.generation,
            target: self.target,
            reload: reload.handoff(),
            ledger: self.ledger_for_handoff(),
            history: self.history.iter().cloned().collect(),
            started_at_unix: self
                .started_at
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            totals: [
                self.totals.spawned,
                self.totals.exited,
                self.totals.timeouts,
                self.totals.reloads,
                // Counted on this scoreboard, which the new image cannot read.
                self.totals.requests_of_exited + self.requests_of_live_workers(),
            ],
        }
    }

    /// The new image's side, once the arbiter exists: adopt the workers, restore the
    /// counters, and go on with the reload as `then` says.
    pub(super) fn resume_after_reexec(
        &mut self,
        handoff: Handoff,
        conns: &[crate::control::ConnId],
        then: Then,
    ) {
        for a in &handoff.workers {
            self.adopt_old_worker(a);
        }
        self.generation = handoff.generation;
        self.target = handoff.target;
        self.history = handoff.history.into();
        let [spawned, exited, timeouts, reloads, requests] = handoff.totals;
        self.totals.spawned = spawned;
        self.totals.exited = exited;
        self.totals.timeouts = timeouts;
        self.totals.reloads = reloads;
        self.totals.requests_of_exited = requests;
        self.ledger = handoff.ledger;
        let now = Instant::now();
        self.started = now
            .checked_sub(Duration::from_millis(handoff.uptime_ms))
            .unwrap_or(now);
        self.started_at =
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs_f64(handoff.started_at_unix);
        let started = now
            .checked_sub(Duration::from_millis(handoff.reload.elapsed_ms))
            .unwrap_or(now);
        let mut waiters = Vec::new();
        for (&conn, handed) in conns.iter().zip(&handoff.conns) {
            waiters.extend(handed.waiting.iter().map(|id| (conn, id.clone())));
            let scales = handed.scale_waiting.iter();
            self.scale_waiters
                .extend(scales.map(|(id, previous)| (conn, id.clone(), *previous)));
        }
        let reload = Reload::resumed(&handoff.reload, started, waiters);
        let (generation, target) = (reload.generation, handoff.reload.target);
        self.reload = Some(reload);
        match then {
            Then::Fail(text) => self.fail_reload(&text),
            // The pending stop abandons the reload at the loop's first turn.
            Then::Hold => {}
            Then::Boot => {
                for _ in 0..target.max(1) {
                    if let Err(e) = self.spawn_worker(generation) {
                        self.fail_reload(&format!("cannot spawn a worker: {e:#}"));
                        break;
                    }
                }
            }
        }
    }

    fn requests_of_live_workers(&self) -> u64 {
        self.workers
            .values()
            .map(|w| {
                let slot = self.scoreboard.slot(w.slot);
                slot.requests.load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// The ledger with every worker's tallies so far: the new image cannot read this
    /// scoreboard, so its counters go on from here (what the adopted workers count
    /// after `execve` is not seen).
    fn ledger_for_handoff(&self) -> Ledger {
        let mut ledger = self.ledger.clone();
        for w in self.workers.values() {
            ledger.fold_slot(w.slot, self.scoreboard.slot(w.slot));
        }
        ledger
    }

    /// A worker of the old image: still our child, not on our scoreboard's clock.
    fn adopt_old_worker(&mut self, a: &Adopted) {
        let Some(slot) = self.scoreboard.claim(|i| self.workers.contains_key(&i)) else {
            tracing::error!("no scoreboard slot for the adopted worker {}", a.pid);
            return;
        };
        let Ok((pipe, _)) = std::os::unix::net::UnixStream::pair() else {
            return;
        };
        self.scoreboard.assign(slot, a.pid);
        // Not `Idle`: the new workers must not count it as a peer to share with.
        self.scoreboard
            .slot(slot)
            .set_state(crate::scoreboard::WorkerState::Stopping);
        self.workers.insert(
            slot,
            WorkerProc {
                pid: nix::unistd::Pid::from_raw(a.pid),
                slot,
                generation: a.generation,
                pipe,
                inbox: Vec::new(),
                ready: true,
                spawned: Instant::now(),
                retiring: false,
                age: a.age,
                aborted: None,
                leaving: None,
                adopted: true,
            },
        );
    }
}

fn cstrings<'a>(items: impl Iterator<Item = &'a [u8]>) -> Result<Vec<CString>, String> {
    items
        .map(|b| CString::new(b).map_err(|e| e.to_string()))
        .collect()
}

/// Clears `FD_CLOEXEC` on `keep`, blocks every signal and `execve`s; on failure puts
/// both back and returns the error.
fn exec_keeping(keep: &[i32], argv: &[CString], envp: &[CString]) -> std::io::Error {
    let mut saved = SigSet::empty();
    let _ = sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    );
    for fd in keep {
        // SAFETY: fcntl on descriptors this process owns.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) };
    }
    let here = std::env::current_dir().ok();
    let _ = std::env::set_current_dir(crate::process::original_cwd());
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated and point into CStrings alive here.
    unsafe { libc::execve(argv_ptrs[0], argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    let error = std::io::Error::last_os_error();
    if let Some(dir) = here {
        let _ = std::env::set_current_dir(dir);
    }
    for fd in keep {
        // SAFETY: as above.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    error
}
