//! Master-side server hooks (`on_starting`, `when_ready`, `pre_fork`, `child_exit`,
//! `nworkers_changed`, `on_reload`, `pre_exec`, `on_exit`).
//!
//! The master runs no code from the configuration file, so these run in a hook host: a
//! child forked at start-up (through CPython's fork hooks) that executes the file and
//! calls hooks on request over a socketpair, answering each in order. Each call waits
//! for the hook to return (as in Gunicorn, `pre_fork` finishes before the fork), at most
//! [`HOOK_TIMEOUT`], while the master keeps answering `status` on its control socket;
//! a hook that takes longer is logged and abandoned (the host finishes it, and its late
//! answer is discarded). Hooks share state with each other (one process), not with the
//! master's memory.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::socket::{recv, MsgFlags};
use nix::unistd::Pid;

use crate::python::Forked;
use serde_json::{json, Value};

use crate::config::file::WaitReadable;
use crate::config::Config;

/// Longest the master waits for a master hook before carrying on without it.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request to the hook host may take to write (its socket buffer is full
/// only if the host is stuck).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

pub const MASTER_HOOKS: &[&str] = &[
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "pre_exec",
    "child_exit",
    "nworkers_changed",
    "on_exit",
    "on_dirty_starting",
    "dirty_worker_exit",
];

pub struct HookHost {
    pub pid: Pid,
    stream: UnixStream,
    /// Answers read but not yet counted (a partial line).
    inbox: Vec<u8>,
    /// Answers the host still owes: the call being waited for, and calls the master
    /// abandoned or did not wait for.
    owed: usize,
    /// The host closed its end or could not be written to: no more calls.
    gone: bool,
}

/// What reading the host's answers found.
enum Answers {
    Open,
    Closed,
}

impl HookHost {
    /// Starts the hook host when the configuration file defines a master-side hook;
    /// `Err` when it defines some but the host cannot be started.
    pub fn start(cfg: &Config) -> anyhow::Result<Option<HookHost>> {
        let Some(location) = cfg.config.as_ref() else {
            return Ok(None);
        };
        if !cfg.hooks.iter().any(|h| MASTER_HOOKS.contains(&h.as_str())) {
            return Ok(None);
        }
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        ours.set_write_timeout(Some(WRITE_TIMEOUT))
            .context("setting a write time-out")?;
        let master = nix::unistd::getpid();
        // SAFETY: called from the single-threaded master before any worker exists; the
        // child only runs the hook host and exits.
        let inherit = crate::python::Inherit::Only(&[theirs.as_raw_fd()]);
        match unsafe { crate::python::fork_interpreter(inherit) }.context("fork")? {
            Forked::Child(signals) => {
                signals.release();
                // A master re-executed in place starts it with every signal still
                // blocked (`reexec`): the host's signals are its own.
                let _ = nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::empty()),
                    None,
                );
                // Already closed by the fork (`Inherit::Only`).
                std::mem::forget(ours);
                // A hook that never returns must not outlive the master.
                // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's
                // parent-death signal.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                if nix::unistd::getppid() != master {
                    std::process::exit(1);
                }
                let code = serve(cfg, location, theirs.as_raw_fd());
                std::process::exit(code);
            }
            Forked::Parent(child) => {
                drop(theirs);
                Ok(Some(HookHost {
                    pid: child,
                    stream: ours,
                    inbox: Vec::new(),
                    owed: 0,
                    gone: false,
                }))
            }
        }
    }

    /// Its socket, for a forked worker to close.
    pub fn fds(&self) -> [i32; 1] {
        [self.stream.as_raw_fd()]
    }

    /// Calls `hook` and waits (through `wait`) for it to return, at most
    /// [`HOOK_TIMEOUT`]. While an abandoned hook still runs, later hooks are queued
    /// behind it without waiting.
    pub fn call(&mut self, hook: &str, args: Value, wait: WaitReadable<'_>) {
        if self.gone {
            return;
        }
        if let Answers::Closed = self.collect_answers() {
            return self.lost(hook);
        }
        let behind_abandoned = self.owed > 0;
        let mut request = json!({"hook": hook});
        if let (Value::Object(r), Value::Object(a)) = (&mut request, args) {
            r.extend(a);
        }
        let mut line = request.to_string();
        line.push('\n');
        if let Err(e) = self.stream.write_all(line.as_bytes()) {
            tracing::error!(
                "cannot send the {hook} hook to the hook host {}: {e}; stopping it, master hooks will not run",
                self.pid
            );
            self.gone = true;
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            return;
        }
        self.owed += 1;
        if behind_abandoned {
            tracing::warn!(
                "the {hook} hook is queued behind an abandoned hook that is still running; the master does not wait for it"
            );
            return;
        }
        let deadline = Instant::now() + HOOK_TIMEOUT;
        loop {
            if let Answers::Closed = self.collect_answers() {
                return self.lost(hook);
            }
            if self.owed == 0 {
                return;
            }
            if !wait(self.stream.as_raw_fd(), deadline) {
                tracing::error!(
                    "the {hook} hook did not return within {} s; the master carries on without it (the hook host finishes it in the background)",
                    HOOK_TIMEOUT.as_secs()
                );
                return;
            }
        }
    }

    /// Counts the answers that have arrived, without blocking.
    fn collect_answers(&mut self) -> Answers {
        let mut buf = [0u8; 512];
        loop {
            match recv(self.stream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Answers::Closed,
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => return Answers::Closed,
            }
        }
        while let Some(end) = self.inbox.iter().position(|b| *b == b'\n') {
            self.inbox.drain(..=end);
            self.owed = self.owed.saturating_sub(1);
        }
        Answers::Open
    }

    fn lost(&mut self, hook: &str) {
        self.gone = true;
        tracing::error!(
            "the hook host {} has exited, so the {hook} hook and later master hooks do not run (its error is above)",
            self.pid
        );
    }
}

impl super::Arbiter {
    /// Runs a master-side hook (in the hook host) and waits for it, answering `status`
    /// on the control socket meanwhile.
    pub(super) fn call_hook(&mut self, hook: &str, args: Value) {
        let Some(mut host) = self.hooks.take() else {
            return;
        };
        let busy = format!("running the {hook} hook");
        host.call(hook, args, &mut |fd, deadline| {
            self.wait_readable(fd, deadline, &busy)
        });
        self.hooks = Some(host);
    }
}

/// The hook host's main: the configuration file, then a request loop.
fn serve(cfg: &Config, location: &str, fd: i32) -> i32 {
    use pyo3::prelude::*;
    crate::process::set_title(&format!("rgun: hooks [{}]", cfg.proc_name()));
    let settings = cfg
        .settings_json(cfg.worker_count().unwrap_or(1) as usize)
        .to_string();
    Python::with_gil(|py| {
        let run = || -> PyResult<()> {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs())?;
            let module = crate::python::embedded_module(py, crate::hooks::HOOKS_PY, "rgun_hooks")?;
            let settings = py.import("json")?.call_method1("loads", (settings,))?;
            module
                .getattr("serve_master_hooks")?
                .call1((location, settings, fd))?;
            Ok(())
        };
        match run() {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(
                    "hook host failed\n{}",
                    crate::python::format_exception(py, &e)
                );
                1
            }
        }
    })
}
