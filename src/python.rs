//! Starting the embedded CPython in a worker: which interpreter (the build's, or the
//! active virtualenv's), its signal handlers (none: Rust owns signals), and `sys.path`
//! (`--chdir`, `--pythonpath`) as Gunicorn sets them.
//!
//! The master never calls into here; it stays free of Python so that `fork()` is safe.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use pyo3::ffi;
use pyo3::prelude::*;

/// The `major.minor` of the libpython this binary links.
pub const EMBEDDED_VERSION: &str = env!("RGUN_PYTHON_VERSION");
/// The interpreter the binary was built against; its prefix holds the standard library.
const BUILD_EXECUTABLE: &str = env!("RGUN_PYTHON_EXECUTABLE");

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("the virtualenv {venv} is Python {found}, but rgun embeds Python {EMBEDDED_VERSION}; recreate the virtualenv with python{EMBEDDED_VERSION}")]
    VenvVersion { venv: String, found: String },
    #[error("cannot read {0}/pyvenv.cfg: is VIRTUAL_ENV a virtualenv?")]
    VenvConfig(String),
    #[error("python initialisation failed: {0}")]
    Init(String),
}

/// The interpreter that `initialize` would start: the active virtualenv's, else the
/// build's. Checked in the master at start-up too, so a wrong venv fails fast.
pub fn interpreter_executable() -> Result<Option<PathBuf>, PythonError> {
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let venv = PathBuf::from(venv);
        check_venv_version(&venv)?;
        return Ok(Some(venv.join("bin").join("python")));
    }
    if std::env::var_os("PYTHONHOME").is_some() || BUILD_EXECUTABLE.is_empty() {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(BUILD_EXECUTABLE)).filter(|p| p.exists()))
}

fn check_venv_version(venv: &Path) -> Result<(), PythonError> {
    let display = venv.display().to_string();
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg"))
        .map_err(|_| PythonError::VenvConfig(display.clone()))?;
    let version = cfg
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| matches!(k.trim(), "version" | "version_info"))
        .map(|(_, v)| v.trim().to_owned())
        .ok_or_else(|| PythonError::VenvConfig(display.clone()))?;
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    if minor != EMBEDDED_VERSION {
        return Err(PythonError::VenvVersion {
            venv: display,
            found: minor,
        });
    }
    Ok(())
}

/// Starts the interpreter in this (worker) process and releases the GIL.
pub fn initialize() -> Result<(), PythonError> {
    let program = interpreter_executable()?;
    // SAFETY: called once per process before any other Python API, on the only thread
    // that exists in a freshly forked worker. `config` is initialised by
    // PyConfig_InitPythonConfig before use and cleared afterwards; the strings we hand
    // over are copied by PyConfig_SetBytesString.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Ok(());
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        // Rust owns SIGINT/SIGTERM/...: Python must not install its own handlers.
        config.install_signal_handlers = 0;
        if let Some(program) = program {
            let c = CString::new(program.to_string_lossy().as_bytes())
                .map_err(|e| PythonError::Init(e.to_string()))?;
            let status =
                ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, c.as_ptr());
            if ffi::PyStatus_Exception(status) != 0 {
                ffi::PyConfig_Clear(&mut config);
                return Err(PythonError::Init(status_message(&status)));
            }
        }
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(PythonError::Init(status_message(&status)));
        }
        // Release the GIL taken by initialisation; pyo3 re-acquires it per use.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

fn status_message(status: &ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return "unknown error".into();
    }
    // SAFETY: err_msg is a static NUL-terminated C string owned by CPython.
    unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
        .to_string_lossy()
        .into_owned()
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
pub fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        let lines = tb.call_method1("format_exception", (err.value(py),))?;
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

/// fork(2) in a process whose interpreter is running (`--preload`): CPython's
/// before/after-fork hooks run around it, so the child's interpreter is consistent.
///
/// # Safety
/// The caller must be single-threaded (the master), as for any fork.
pub unsafe fn fork_interpreter() -> nix::Result<nix::unistd::ForkResult> {
    Python::with_gil(|_py| {
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
    })
}
