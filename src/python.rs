//! The interpreter rgun runs in. rgun is a Python extension module (`rgun._rgun`):
//! `rgun` is a console script of the venv it was installed into, so the interpreter
//! that loaded the module (the venv's own, static or shared) is the one every process
//! uses. Nothing here starts or configures an interpreter; this module only adapts the
//! running one: Rust owns the signals, `sys.path` is set as Gunicorn sets it, and every
//! fork goes through CPython's fork hooks.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use pyo3::ffi;
use pyo3::prelude::*;

/// Gives the signals back to Rust: the interpreter installed a SIGINT handler that
/// only sets a flag for Python code to notice, which neither the master loop nor
/// `rgunctl` runs. With the default disposition, the handlers `signals::SignalPipe`
/// installs are the only ones (and `rgunctl` dies on Ctrl-C as a command should).
pub fn take_over_signals(py: Python<'_>) -> PyResult<()> {
    let signal = py.import("signal")?;
    signal.call_method1("signal", (libc::SIGINT, signal.getattr("SIG_DFL")?))?;
    Ok(())
}

/// `-e KEY=VALUE` (Gunicorn's `raw_env`), through `os.environ`, which calls putenv
/// too: the interpreter copied the process environment into `os.environ` when it
/// started, long before this worker was forked, so `setenv` alone would not reach
/// the application.
pub fn set_environ(py: Python<'_>, env: &[(String, String)]) -> PyResult<()> {
    let environ = py.import("os")?.getattr("environ")?;
    for (k, v) in env {
        environ.set_item(k, v)?;
    }
    Ok(())
}

/// Gunicorn's `sys.path` set-up: the working directory first, then `--pythonpath`
/// entries; and Python's stdout joins stderr, which is the error log.
pub fn configure_sys(py: Python<'_>, cwd: &Path, pythonpath: &[PathBuf]) -> PyResult<()> {
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?;
    for (i, dir) in std::iter::once(cwd)
        .chain(pythonpath.iter().map(PathBuf::as_path))
        .enumerate()
    {
        path.call_method1("insert", (i, dir.to_string_lossy().as_ref()))?;
    }
    sys.setattr("stdout", sys.getattr("stderr")?)?;
    // On SIGABRT (the master's time-out), write every thread's stack to the error log
    // before dying, so the stuck request's frames are on record.
    py.import("faulthandler")?
        .call_method1("enable", (sys.getattr("stderr")?, true))?;
    Ok(())
}

/// Formats a Python exception with its traceback, as `traceback.format_exception` does.
/// The traceback is passed on its own: before 3.12 a fetched exception's traceback is
/// not yet on its value (`__traceback__`), so the value alone would print one line.
pub fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let joined: String = PyModule::import(py, "builtins")?
            .getattr("str")?
            .call_method1("join", ("", lines))?
            .extract()?;
        Ok(joined)
    });
    formatted
        .unwrap_or_else(|_| err.to_string())
        .trim_end()
        .to_owned()
}

/// What `fork_interpreter` returns.
pub enum Forked {
    Parent(nix::unistd::Pid),
    /// In the child every signal is blocked until `BlockedSignals::release`.
    Child(BlockedSignals),
}

/// Signals held pending in a newly forked child: one sent in its first moments (a
/// `scale +1` then `scale -1`) waits for the child's own handlers instead of running
/// the parent's inherited ones, which would lose it.
#[must_use = "a child keeps every signal blocked until it releases them"]
pub struct BlockedSignals(SigSet);

impl BlockedSignals {
    /// Restores the signal mask the parent had before the fork.
    pub fn release(self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// Which of the parent's descriptors a forked child keeps.
#[derive(Clone, Copy)]
pub enum Inherit<'a> {
    /// All but these, the master's own (its signal pipe, poll, control socket, the
    /// other workers' pipes): a worker keeps the listeners and whatever a preloaded
    /// application opened.
    AllBut(&'a [RawFd]),
    /// The standard streams and these only: a helper that runs user code (the
    /// configuration file's evaluation, the hook host) has no business with the
    /// master's sockets, and must not hold a listener open.
    Only(&'a [RawFd]),
}

impl Inherit<'_> {
    /// In the new child, before anything else runs.
    fn apply(self) {
        let close = |fd: RawFd| {
            // SAFETY: closing a descriptor this freshly forked, single-threaded child
            // must not keep; nothing in it uses the descriptor.
            unsafe { libc::close(fd) };
        };
        match self {
            Inherit::AllBut(fds) => fds.iter().copied().for_each(close),
            Inherit::Only(keep) => {
                // Listed first, closed after: the listing holds a descriptor of its own
                // (closed when it is dropped, so it is skipped here).
                let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
                    Ok(dir) => dir
                        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                        .collect(),
                    Err(_) => return,
                };
                open.into_iter()
                    .filter(|fd| *fd > 2 && !keep.contains(fd))
                    .filter(|fd| nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_GETFD).is_ok())
                    .for_each(close);
            }
        }
    }
}

/// fork(2): rgun's only way to fork (the child of a re-execution's `Command::spawn`
/// only execs). Every signal is blocked across it (see `BlockedSignals`), CPython's
/// before/after-fork hooks run around it (its locks, the threading module,
/// `os.register_at_fork` callbacks), so the child's interpreter is consistent whether
/// or not the master imported the app, and the child closes the descriptors `inherit`
/// says it must not keep before it returns.
///
/// # Safety
/// The caller must be single-threaded (the master, or `main` before the master loop),
/// as for any fork.
pub unsafe fn fork_interpreter(inherit: Inherit<'_>) -> nix::Result<Forked> {
    let mut saved = SigSet::empty();
    let _ = sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut saved),
    );
    let result = Python::with_gil(|_py| {
        // SAFETY: the GIL is held, as these hooks require; the caller guarantees a
        // single-threaded process.
        unsafe {
            ffi::PyOS_BeforeFork();
            let result = nix::unistd::fork();
            match result {
                Ok(nix::unistd::ForkResult::Child) => ffi::PyOS_AfterFork_Child(),
                _ => ffi::PyOS_AfterFork_Parent(),
            }
            result
        }
    });
    match result {
        Ok(nix::unistd::ForkResult::Child) => {
            inherit.apply();
            Ok(Forked::Child(BlockedSignals(saved)))
        }
        other => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
            other.map(|r| match r {
                nix::unistd::ForkResult::Parent { child } => Forked::Parent(child),
                nix::unistd::ForkResult::Child => unreachable!(),
            })
        }
    }
}

/// Declares `struct Keys`: interned Python strings made once per worker, the keys of
/// a WSGI environ or an ASGI scope: `field = "text"`, or `field` alone for the text
/// `"field"`. The module using it imports `Py`, `PyString` and `Python`.
macro_rules! interned_keys {
    (@text $field:ident) => { stringify!($field) };
    (@text $field:ident $text:literal) => { $text };
    ($($field:ident $(= $text:literal)?),* $(,)?) => {
        struct Keys { $($field: Py<PyString>,)* }
        impl Keys {
            fn new(py: Python<'_>) -> Keys {
                Keys {
                    $($field: PyString::intern(
                        py,
                        $crate::python::interned_keys!(@text $field $($text)?),
                    )
                    .unbind(),)*
                }
            }
            /// Another handle on the same strings (a preloaded app's forked worker).
            #[allow(dead_code)]
            fn clone_ref(&self, py: Python<'_>) -> Keys {
                Keys { $($field: self.$field.clone_ref(py),)* }
            }
        }
    };
}
pub(crate) use interned_keys;

/// One of rgun's own Python files, run as module `name` (`name.py` in tracebacks).
pub fn embedded_module<'py>(
    py: Python<'py>,
    source: &str,
    name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let c = |s: String| std::ffi::CString::new(s).expect("no NUL in an embedded module");
    PyModule::from_code(
        py,
        &c(source.to_owned()),
        &c(format!("{name}.py")),
        &c(name.to_owned()),
    )
}
