//! The reload probe (`--reload-probe`): in a new worker, after the application is
//! imported and before the worker tells the master it is ready, one synthetic
//! `GET PATH` through the application — the environ a real request would get, built by
//! the same `EnvironBuilder`, with no socket — whose status must be the expected one.
//!
//! Done here rather than as a real request from the master: it reaches this worker and
//! no other (a request on the shared listeners could be accepted by an old one), costs
//! no connection, and the master's loop never waits on an HTTP exchange. A failure is
//! a boot failure, so a reload rolls back with the reason as its answer.
//! Invariant: never touches a client socket; not a request (no hooks, no access log, no
//! scoreboard count).

use pyo3::prelude::*;
use pyo3::types::{PyModule, PyString};

use crate::asgi::AsgiApp;
use crate::config::Probe;
use crate::http::body::Body;
use crate::http::head::{parse_head, HeadLimits, RequestHead};
use crate::http::request::RequestInfo;
use crate::net::{Local, Peer};
use crate::wsgi::App;

/// The application a probe calls.
pub enum Target<'a> {
    Wsgi(&'a App),
    Asgi(&'a AsgiApp),
}

const PROBE_PY: &str = include_str!("probe.py");

/// Calls the application once with the probe's request. `Err` is why this worker must
/// not serve: the status it got, or the exception, then the errors the application
/// logged meanwhile (a framework that turns an exception into a 500 logs the
/// traceback).
pub fn check(
    py: Python<'_>,
    app: Target<'_>,
    probe: &Probe,
    local: &Local,
    limits: &HeadLimits,
) -> Result<(), String> {
    let what = format!(
        "The reload probe (GET {} with Host: {})",
        probe.path, probe.host
    );
    let raw = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rgun-reload-probe\r\n\r\n",
        probe.path, probe.host
    );
    let mut head = RequestHead::default();
    if !matches!(parse_head(raw.as_bytes(), limits, &mut head), Ok(Some(_))) {
        return Err(format!("{what} is not a request rgun accepts"));
    }
    let module = crate::python::embedded_module(py, PROBE_PY, "rgun_probe")
        .and_then(|m| Ok((m.getattr("Errors")?.call0()?, m)))
        .map_err(|e| crate::python::format_exception(py, &e));
    let (errors, module) = module?;
    let _ = errors.call_method0("__enter__");
    let outcome = answer(py, app, &module, raw.as_bytes(), &head, local);
    let _ = errors.call_method1("__exit__", (py.None(), py.None(), py.None()));
    let logged: Vec<String> = errors
        .getattr("texts")
        .and_then(|t| t.extract())
        .unwrap_or_default();
    let logged = if logged.is_empty() {
        String::new()
    } else {
        format!("\nThe application logged:\n{}", logged.join("\n"))
    };
    match outcome {
        Ok(Some(status)) if status == probe.status => Ok(()),
        Ok(Some(status)) => Err(format!(
            "{what} was answered {status}, not {}{logged}",
            probe.status
        )),
        Ok(None) => Err(format!(
            "{what}: the application never called start_response{logged}"
        )),
        Err(e) => Err(format!(
            "{what} failed:\n{}{logged}",
            crate::python::format_exception(py, &e)
        )),
    }
}

/// The application's answer to the probe, its body drained and closed (WSGI) or run to
/// its end (ASGI): the status code (`None` when it never started a response).
fn answer(
    py: Python<'_>,
    app: Target<'_>,
    module: &Bound<'_, PyModule>,
    head_bytes: &[u8],
    head: &RequestHead,
    local: &Local,
) -> PyResult<Option<u16>> {
    let peer = Peer {
        addr: "127.0.0.1".into(),
        port: "0".into(),
        trusted: false,
    };
    let info = RequestInfo {
        head_bytes,
        head,
        peer: &peer,
        local,
        https: false,
        client_subject: None,
        // The probe is no front end: nothing it sends is forwarded.
        forwarder_headers: &crate::http::forwarder::ForwarderHeaders::Names(Vec::new()),
    };
    let app = match app {
        Target::Wsgi(app) => app,
        Target::Asgi(asgi) => {
            let (callable, scope) = asgi.callable_and_scope(py, &info)?;
            let status =
                module
                    .getattr("asgi_status")?
                    .call1((asgi.event_loop(py), callable, scope))?;
            return status.extract();
        }
    };
    let remote = (
        PyString::new(py, &peer.addr).unbind(),
        PyString::new(py, &peer.port).unbind(),
    );
    let response = app.call(py, &info, &remote, Body::Empty)?;
    module
        .getattr("drain")?
        .call1((response.result.bind(py),))?;
    let start = response.start_response.borrow(py);
    Ok(start
        .head
        .as_ref()
        .and_then(|h| h.status().get(..3).and_then(|code| code.parse().ok())))
}
