//! Gunicorn server hooks in a worker: the configuration file is executed again in the
//! worker's own interpreter and its worker-side hooks (`post_fork`, `post_worker_init`,
//! `pre_request`, `post_request`, `worker_int`, `worker_exit`) are called where Gunicorn
//! calls them. A hook that raises is logged with its traceback and never stops the
//! worker. The objects hooks receive are built in `hooks.py`.

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

pub const HOOKS_PY: &str = include_str!("hooks.py");

/// The hooks rgun calls in workers as Gunicorn does (`dirty_worker_init` in dirty
/// workers); `hooks.py` lists them, and `dirty_post_fork`, which a dirty worker calls
/// where Gunicorn's dirty arbiter would.
pub const WORKER_HOOKS: &[&str] = &[
    "post_fork",
    "post_worker_init",
    "pre_request",
    "post_request",
    "worker_int",
    "worker_abort",
    "worker_exit",
    "dirty_worker_init",
];

pub struct Hooks {
    inner: Py<PyAny>,
    request_class: Py<PyAny>,
    response_class: Py<PyAny>,
    pub pre_request: bool,
    pub post_request: bool,
}

impl Hooks {
    /// Loads the hooks of `cfg.config`, or None when it defines no worker hook.
    pub fn load(py: Python<'_>, cfg: &crate::config::Config, age: u64) -> PyResult<Option<Hooks>> {
        let Some(location) = &cfg.config else {
            return Ok(None);
        };
        if cfg.hooks.is_empty() {
            return Ok(None);
        }
        let module = crate::python::embedded_module(py, HOOKS_PY, "rgun_hooks")?;
        let settings = py.import("json")?.call_method1(
            "loads",
            (cfg.settings_json(cfg.worker_count().unwrap_or(1) as usize)
                .to_string(),),
        )?;
        let inner = module
            .getattr("Hooks")?
            .call1((location.as_str(), settings, age))?;
        let names: Vec<String> = inner.call_method0("names")?.extract()?;
        if names.is_empty() {
            return Ok(None);
        }
        Ok(Some(Hooks {
            request_class: module.getattr("Request")?.unbind(),
            response_class: module.getattr("Response")?.unbind(),
            pre_request: names.iter().any(|n| n == "pre_request"),
            post_request: names.iter().any(|n| n == "post_request"),
            inner: inner.unbind(),
        }))
    }

    /// Sets an attribute of the `worker` object hooks receive (a dirty worker's
    /// `app_paths`).
    pub fn set_worker_attr(
        &self,
        py: Python<'_>,
        name: &str,
        value: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.inner.bind(py).getattr("worker")?.setattr(name, value)
    }

    /// Calls a hook by name with extra arguments after the worker.
    pub fn call<'py>(&self, py: Python<'py>, name: &str, args: Vec<Bound<'py, PyAny>>) {
        let mut all: Vec<Bound<'py, PyAny>> = vec![pyo3::types::PyString::new(py, name).into_any()];
        all.extend(args);
        let Ok(tuple) = PyTuple::new(py, all) else {
            return;
        };
        if let Err(e) = self.inner.bind(py).call_method1("call", tuple) {
            tracing::error!(
                "hook {name} failed\n{}",
                crate::python::format_exception(py, &e)
            );
        }
    }

    /// A request starting: its `req` object when pre_request or post_request is set
    /// (None otherwise, or when it cannot be built), pre_request already called with it.
    pub fn begin_request<'py>(
        &self,
        py: Python<'py>,
        head_bytes: &[u8],
        head: &crate::http::head::RequestHead,
        remote: &str,
    ) -> Option<Bound<'py, PyAny>> {
        if !(self.pre_request || self.post_request) {
            return None;
        }
        // A req object that cannot be built is logged; the request is served without
        // its pre_request/post_request hooks.
        let req = self
            .request(py, head_bytes, head, remote)
            .map_err(|e| {
                tracing::error!(
                    "cannot build the req object, so the pre_request/post_request hooks skip this request\n{}",
                    crate::python::format_exception(py, &e)
                )
            })
            .ok()?;
        if self.pre_request {
            self.call(py, "pre_request", vec![req.clone()]);
        }
        Some(req)
    }

    /// [`Hooks::response`], or None (logged) when it cannot be built: post_request is
    /// then not called for this request.
    pub fn response_or_log<'py>(
        &self,
        py: Python<'py>,
        status: &str,
        headers: Vec<(String, String)>,
        sent: u64,
    ) -> Option<Bound<'py, PyAny>> {
        self.response(py, status, headers, sent)
            .map_err(|e| {
                tracing::error!(
                    "cannot build the resp object, so the post_request hook skips this request\n{}",
                    crate::python::format_exception(py, &e)
                )
            })
            .ok()
    }

    /// A `req` object for pre_request/post_request.
    pub fn request<'py>(
        &self,
        py: Python<'py>,
        head_bytes: &[u8],
        head: &crate::http::head::RequestHead,
        remote: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&head_bytes[r]).into_owned();
        let headers = PyList::empty(py);
        for (n, v) in &head.headers {
            headers.append((text(n.clone()).to_ascii_uppercase(), text(v.clone())))?;
        }
        self.request_class.bind(py).call1((
            text(head.method.clone()),
            text(head.target.clone()),
            text(head.path.clone()),
            text(head.query.clone()),
            (1, head.minor_version),
            headers,
            remote,
        ))
    }

    /// A `resp` object for post_request.
    pub fn response<'py>(
        &self,
        py: Python<'py>,
        status: &str,
        headers: Vec<(String, String)>,
        sent: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.response_class.bind(py).call1((status, headers, sent))
    }
}
