//! The Python side of logging in a worker: `gunicorn.error` and `gunicorn.access`
//! (`loggers.py`) get Gunicorn's levels, handlers and formats before the application
//! is imported, for the application's own records. rgun's records never pass through
//! them.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::logformat::LineFormat;
use crate::config::Config;

const LOGGERS_PY: &str = include_str!("loggers.py");

/// Sets up the two loggers for `cfg`'s level and logs (after a logging
/// configuration's plan was applied to it), in its formats.
pub fn set_up(py: Python<'_>, cfg: &Config) -> PyResult<()> {
    let globals = PyDict::new(py);
    let code = std::ffi::CString::new(LOGGERS_PY).expect("no NUL in loggers.py");
    py.run(&code, Some(&globals), None)?;
    let set_up = globals
        .get_item("set_up")?
        .expect("loggers.py defines set_up");
    let obs = &cfg.observability;
    let error_format = obs.error_log_format.as_ref();
    set_up.call1((
        cfg.loglevel.as_str(),
        cfg.error_logfile.as_str(),
        cfg.access_logfile.as_deref(),
        error_format.map(LineFormat::python),
        error_format.and_then(|f| f.datefmt.clone()),
        obs.access_log_wrap.as_ref().map(LineFormat::python),
    ))?;
    Ok(())
}
