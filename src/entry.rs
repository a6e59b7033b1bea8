//! The extension module `rgun._rgun`, rgun's only way in: the `rgun` and `rgunctl`
//! console scripts (`python/rgun/__main__.py`) call [`serve`] and `rgunctl` with
//! `sys.argv`, in the interpreter of the venv rgun was installed into.
//!
//! `serve` reads top-down: command line → `Config` → `master::run`. Only this file turns
//! errors into exit statuses, which go back to Python as the script's exit status.
//! It must not keep the GIL: the master runs with it released, and takes it only to
//! fork (`python::fork_interpreter`) or to call `--preload`'s application.

use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::prelude::*;

use crate::config::Config;

#[pymodule]
fn _rgun(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(control, m)?)?;
    Ok(())
}

/// `rgun`: runs the server in this process until it stops; returns the exit status.
/// `executable` is `sys.executable`, `argv` is `sys.argv`; a re-execution (USR2, a
/// `--preload` reload) runs them again.
#[pyfunction]
fn serve(py: Python<'_>, executable: PathBuf, argv: Vec<OsString>) -> PyResult<i32> {
    crate::process::original_cwd();
    crate::process::record_start(crate::process::StartCommand::new(executable, argv));
    crate::python::take_over_signals(py)?;
    let code = py.allow_threads(run);
    flush_stdout();
    Ok(code)
}

/// `rgunctl`: the control client (crate `rgunctl`, no Python in it); `argv` is
/// `sys.argv`. Returns the exit status.
#[pyfunction]
#[pyo3(name = "rgunctl")]
fn control(py: Python<'_>, argv: Vec<OsString>) -> PyResult<u8> {
    crate::python::take_over_signals(py)?;
    let code = py.allow_threads(|| ::rgunctl::cli::run(argv));
    flush_stdout();
    // `ExitCode` keeps its value private; rgunctl's are 0 to 3.
    Ok((0..=u8::MAX)
        .find(|n| std::process::ExitCode::from(*n) == code)
        .unwrap_or(1))
}

/// Rust's stdout buffers up to a newline and nothing flushes it when the interpreter
/// exits (`--generate` output, tables).
fn flush_stdout() {
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

fn run() -> i32 {
    let cfg = Config::from_args();
    if let Some(what) = &cfg.generate {
        if let Err(e) = crate::config::reference::generate(what) {
            eprintln!("rgun: {e}");
            return 2;
        }
        return 0;
    }
    if cfg.print_config {
        let text = cfg.print_config_text(cfg.worker_count().unwrap_or(1) as usize);
        // A reader that went away (`rgun --print-config | head`) is no error.
        if let Err(e) = crate::config::reference::write_stdout(text.as_bytes()) {
            eprintln!("rgun: cannot write the settings: {e}");
            return 1;
        }
        return 0;
    }
    // A master re-executed in place (`--preload` reload) is daemonized already.
    if cfg.daemon && std::env::var_os(crate::master::REEXEC_ENV).is_none() {
        if let Err(e) = crate::process::daemonize(cfg.error_logfile == "-") {
            eprintln!("rgun: cannot daemonize: {e:#}");
            return 1;
        }
    }
    if let Err(e) = crate::log::init_error_log(&crate::log::ErrorLog::of(&cfg)) {
        eprintln!("rgun: {e}");
        return 1;
    }
    if cfg.check_config {
        return crate::master::check_config(&cfg);
    }
    // As Gunicorn's arbiter does before any hook, preload or worker: apps read it to
    // tell they run under Gunicorn.
    let software = [(
        "SERVER_SOFTWARE".to_owned(),
        crate::wsgi::SERVER_SOFTWARE.to_owned(),
    )];
    if let Err(e) = Python::with_gil(|py| crate::python::set_environ(py, &software)) {
        eprintln!("rgun: cannot set SERVER_SOFTWARE: {e}");
        return 1;
    }
    match crate::master::run(cfg) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rgun: {e:#}");
            1
        }
    }
}
