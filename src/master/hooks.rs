//! Master-side server hooks (`on_starting`, `when_ready`, `pre_fork`, `child_exit`,
//! `nworkers_changed`, `on_reload`, `pre_exec`, `on_exit`).
//!
//! The master runs no code from the configuration file, so these run in a hook host: a
//! child forked at start-up (through CPython's fork hooks) that executes the file and calls
//! hooks on request over a socketpair. Each call waits for the hook to return (as in
//! Gunicorn, `pre_fork` finishes before the fork), bounded by a time limit. Hooks share
//! state with each other (one process), not with the master's memory.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::unistd::{ForkResult, Pid};
use serde_json::{json, Value};

use crate::config::Config;

/// Longest a master hook may run before the master gives up waiting.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

const MASTER_HOOKS: &[&str] = &[
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "pre_exec",
    "child_exit",
    "nworkers_changed",
    "on_exit",
];

pub struct HookHost {
    pub pid: Pid,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl HookHost {
    /// Starts the hook host when the configuration file defines a master-side hook.
    pub fn start(cfg: &Config) -> Option<HookHost> {
        let location = cfg.config.as_ref()?;
        if !cfg.hooks.iter().any(|h| MASTER_HOOKS.contains(&h.as_str())) {
            return None;
        }
        let (ours, theirs) = UnixStream::pair().ok()?;
        // SAFETY: called from the single-threaded master before any worker exists; the
        // child only runs the hook host and exits.
        match unsafe { crate::python::fork_interpreter() }.ok()? {
            ForkResult::Child => {
                drop(ours);
                let code = serve(cfg, location, theirs.as_raw_fd());
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(theirs);
                ours.set_read_timeout(Some(HOOK_TIMEOUT)).ok()?;
                let reader = BufReader::new(ours.try_clone().ok()?);
                Some(HookHost {
                    pid: child,
                    writer: ours,
                    reader,
                })
            }
        }
    }

    /// Its socket, for a forked worker to close.
    pub fn fds(&self) -> [i32; 2] {
        [self.writer.as_raw_fd(), self.reader.get_ref().as_raw_fd()]
    }

    /// Calls `hook` and waits for it to return.
    pub fn call(&mut self, hook: &str, args: Value) {
        let mut request = json!({"hook": hook});
        if let (Value::Object(r), Value::Object(a)) = (&mut request, args) {
            r.extend(a);
        }
        let mut line = request.to_string();
        line.push('\n');
        let mut reply = String::new();
        let ok = self.writer.write_all(line.as_bytes()).is_ok()
            && self.reader.read_line(&mut reply).is_ok_and(|n| n > 0);
        if !ok {
            // A late reply would answer the next call: stop the host instead (the
            // master logs its exit and runs no more master hooks).
            tracing::error!("the {hook} hook did not complete within {HOOK_TIMEOUT:?}; stopping the hook host {}", self.pid);
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The hook host's main: the configuration file, then a request loop.
fn serve(cfg: &Config, location: &str, fd: i32) -> i32 {
    use pyo3::prelude::*;
    use pyo3::types::PyModule;
    crate::process::set_title(&format!("rgun: hooks [{}]", cfg.app));
    let settings = cfg
        .settings_json(cfg.worker_count().unwrap_or(1) as usize)
        .to_string();
    Python::with_gil(|py| {
        let run = || -> PyResult<()> {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs())?;
            let module = PyModule::from_code(
                py,
                &std::ffi::CString::new(crate::hooks::HOOKS_PY).expect("no NUL"),
                c"rgun_hooks.py",
                c"rgun_hooks",
            )?;
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
