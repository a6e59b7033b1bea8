//! Importing the application named on the command line (`MODULE:CALLABLE`, factories
//! allowed) with Gunicorn's rules, implemented in `loader.py`; for the WSGI bridge,
//! the ASGI worker, `--preload` and `--check-config` alike. Knows no protocol and
//! calls nothing it imports except a factory the spec names.

use pyo3::prelude::*;
use pyo3::types::PyModule;

const LOADER: &str = include_str!("loader.py");

fn loader(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    crate::python::embedded_module(py, LOADER, "rgun_loader")
}

/// Imports `spec`, whatever kind of application it is (the ASGI worker's loader).
pub fn import_callable<'py>(py: Python<'py>, spec: &str) -> PyResult<Bound<'py, PyAny>> {
    loader(py)?.getattr("import_app")?.call1((spec,))
}

/// Imports `spec` as a WSGI application: an ASGI one is refused with an `ImportError`
/// that says to run it with `-k asgi`.
pub fn import_wsgi_callable<'py>(py: Python<'py>, spec: &str) -> PyResult<Bound<'py, PyAny>> {
    loader(py)?.getattr("import_wsgi_app")?.call1((spec,))
}
