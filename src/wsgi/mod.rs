//! The WSGI bridge: loading the application and calling it for one request.
//!
//! `worker::bridge` hands it a request (`http::request::RequestInfo`) and a complete
//! body, and gets back the application's result iterable with its `start_response`
//! state, which `response::WsgiSource` turns into a response through any
//! `ResponseSink`. It knows no HTTP version and does no socket I/O.

pub mod environ;
pub mod input;
pub mod response;
pub mod start_response;

pub use environ::SERVER_SOFTWARE;

use pyo3::prelude::*;

use self::environ::{EnvironBuilder, Remote};
use self::input::Input;
use self::start_response::StartResponse;
use crate::http::body::Body;
use crate::http::request::RequestInfo;

const BOOTSTRAP: &str = include_str!("bootstrap.py");

/// A loaded application and the per-worker state needed to call it.
pub struct App {
    callable: Py<PyAny>,
    environ: EnvironBuilder,
    file_wrapper: Py<PyAny>,
    sendfile_fd: Py<PyAny>,
    /// `wsgi.input` of every request without a body: reading an empty body changes
    /// nothing, so one object serves them all (no allocation per request).
    empty_input: Py<Input>,
}

/// What the application returned for one request.
pub struct AppResponse {
    pub result: Py<PyAny>,
    pub start_response: Py<StartResponse>,
    /// The environ the application saw (for `post_request` hooks).
    pub environ: Py<pyo3::types::PyDict>,
}

impl App {
    /// Imports `spec` (`crate::loader`) and makes the per-worker state to call it.
    pub fn load(
        py: Python<'_>,
        spec: &str,
        multithread: bool,
        multiprocess: bool,
    ) -> PyResult<App> {
        let bootstrap = crate::python::embedded_module(py, BOOTSTRAP, "rgun_bootstrap")?;
        let callable = crate::loader::import_wsgi_callable(py, spec)?;
        let file_wrapper = bootstrap.getattr("FileWrapper")?;
        let environ = EnvironBuilder::new(py, multithread, multiprocess, &file_wrapper)?;
        Ok(App {
            callable: callable.unbind(),
            environ,
            file_wrapper: file_wrapper.unbind(),
            sendfile_fd: bootstrap.getattr("sendfile_fd")?.unbind(),
            empty_input: Py::new(py, Input::new(Body::Empty))?,
        })
    }

    /// Another handle on the same application (a preloaded app in a forked worker).
    pub fn clone_ref(&self, py: Python<'_>) -> App {
        App {
            callable: self.callable.clone_ref(py),
            environ: self.environ.clone_ref(py),
            file_wrapper: self.file_wrapper.clone_ref(py),
            sendfile_fd: self.sendfile_fd.clone_ref(py),
            empty_input: self.empty_input.clone_ref(py),
        }
    }

    /// Calls the application. An `Err` is an exception raised by the call itself.
    pub fn call(
        &self,
        py: Python<'_>,
        req: &RequestInfo<'_>,
        remote: &Remote,
        body: Body,
    ) -> PyResult<AppResponse> {
        let input = match body {
            Body::Empty => self.empty_input.bind(py).clone().into_any(),
            body => Bound::new(py, Input::new(body))?.into_any(),
        };
        let environ = self.environ.build(py, req, remote, input)?;
        let start_response = Py::new(py, StartResponse::default())?;
        let result = self
            .callable
            .bind(py)
            .call1((&environ, start_response.clone_ref(py)))?;
        Ok(AppResponse {
            result: result.unbind(),
            start_response,
            environ: environ.unbind(),
        })
    }

    /// For a `wsgi.file_wrapper` result with a real file: its (fd, offset).
    pub fn sendfile_source(&self, py: Python<'_>, result: &Bound<'_, PyAny>) -> Option<(i32, i64)> {
        // Most responses are lists: an exact type check is far cheaper than isinstance.
        if result.is_exact_instance_of::<pyo3::types::PyList>()
            || !result
                .is_instance(self.file_wrapper.bind(py))
                .unwrap_or(false)
        {
            return None;
        }
        self.sendfile_fd
            .bind(py)
            .call1((result,))
            .ok()?
            .extract()
            .ok()
    }
}
