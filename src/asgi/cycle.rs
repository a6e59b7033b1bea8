//! `Cycle`: one HTTP request/response cycle as the application sees it — its
//! `receive()` and `send()` — and the response source the connection core drains.
//!
//! `send()` frames into the cycle's `Sink` — an HTTP/1 connection's `Http1Response`
//! (the same `ResponseSink`/`Outbox` path as WSGI) or an HTTP/2 stream's `H2Response` —
//! and completes at once while less than `SEND_HIGH_WATER_BYTES` wait for the socket
//! (or the stream's window); past it, it returns a future the connection resolves
//! once the backlog is taken, so a stalled reader suspends the application instead
//! of growing a buffer. `receive()` hands out the already-read body (in memory, or in
//! `RECEIVE_CHUNK_BYTES` pieces of the spill file), then waits for `http.disconnect`.
//! Nothing here touches a socket: the connection (`worker::conn`) flushes and tells
//! the cycle what happened; the cycle tells the connection through `Wakeups`.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::message::{body_and_more, disconnect_message, header_pair, required};
use super::sink::Sink;
use super::wake::Wakeups;
use crate::http::body::Body;
use crate::http::framer::{Http1Response, ResponseSink};
use crate::http::h2::H2Response;
use crate::http::response::{RequestFacts, StatusLine};
use crate::net::outbox::Outbox;

/// `send()` suspends the application once this much waits for the socket.
pub const SEND_HIGH_WATER_BYTES: usize = 64 * 1024;
/// The largest `http.request` body piece read from a spilled body.
const RECEIVE_CHUNK_BYTES: usize = 64 * 1024;
const ERROR_BODY: &[u8] = b"Internal Server Error";

/// Response header (name, value) pairs as the application gave them.
type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// What every cycle of a worker shares.
pub struct Kit {
    /// The loop's `create_future`.
    pub create_future: Py<PyAny>,
    /// The awaitable every `send()` that need not wait returns: one asyncio Future of
    /// the loop's, completed with `None` once. Awaiting a done Future never suspends
    /// and, through its C iterator's `am_send`, raises no StopIteration: cheaper than
    /// any awaitable of our own (two calls into Rust and an exception per `await`).
    pub done: Py<PyAny>,
    /// `bridge.ClientDisconnected`, the `OSError` a `send()` to a client that left raises.
    pub disconnected_error: Py<PyAny>,
    /// `bridge.canceller`'s function: cancels a task after the disconnect grace period.
    pub cancel_after_grace: Py<PyAny>,
}

impl Kit {
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Kit {
        Kit {
            create_future: self.create_future.clone_ref(py),
            done: self.done.clone_ref(py),
            disconnected_error: self.disconnected_error.clone_ref(py),
            cancel_after_grace: self.cancel_after_grace.clone_ref(py),
        }
    }
}

/// Where the response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No `http.response.start` yet.
    Waiting,
    /// Started; the head waits for the first body message (to learn the length).
    Started,
    /// The head is framed; more body may follow.
    Streaming,
    /// Every byte of the response is framed.
    Complete,
}

/// What the connection should do once the outbox is empty.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The application is still producing: wait for it (or for the client).
    Running,
    /// The response ended properly.
    Done,
    /// The response cannot end properly (or was an error answer): close.
    Broken,
}

/// Single-threaded (`unsendable`): ASGI calls `receive`/`send` on the loop's thread.
#[pyclass(unsendable, module = "rgun")]
pub struct Cycle {
    sink: Sink,
    facts: RequestFacts,
    body: Option<Body>,
    start: Option<(u16, Headers)>,
    /// The headers of the head framed (for a `post_request` hook's `resp`).
    sent_headers: Headers,
    phase: Phase,
    /// Close after what is queued.
    broken: bool,
    disconnected: bool,
    /// `receive()` calls waiting for `http.disconnect`.
    receivers: Vec<Py<PyAny>>,
    /// A `send()` waiting for the socket to drain.
    sender: Option<Py<PyAny>>,
    /// How to tell the connection there is news; `None` once detached from it.
    wake: Option<(Arc<Wakeups>, usize)>,
    /// The connection waits for news (set by `arm`, cleared by the wake).
    armed: bool,
    kit: Kit,
    /// The application's Task once it waits (asyncio itself keeps only a weak
    /// reference); dropped when it ends.
    task: Option<Py<PyAny>>,
}

impl Cycle {
    pub fn new(
        py: Python<'_>,
        sink: Sink,
        facts: RequestFacts,
        body: Body,
        wake: (Arc<Wakeups>, usize),
        kit: &Kit,
    ) -> Cycle {
        Cycle {
            sink,
            facts,
            body: Some(body),
            start: None,
            sent_headers: Vec::new(),
            phase: Phase::Waiting,
            broken: false,
            disconnected: false,
            receivers: Vec::new(),
            sender: None,
            wake: Some(wake),
            armed: false,
            kit: kit.clone_ref(py),
            task: None,
        }
    }

    pub fn set_task(&mut self, task: Py<PyAny>) {
        self.task = Some(task);
    }

    /// An HTTP/1 connection's response (`conn::asgi`).
    pub fn http(&mut self) -> &mut Http1Response {
        match &mut self.sink {
            Sink::Http1(http) => http,
            Sink::Http2(_) => unreachable!("an HTTP/2 stream's cycle is driven by conn::h2_asgi"),
        }
    }

    /// An HTTP/2 stream's response (`conn::h2_asgi`); `None` for HTTP/1.
    pub fn stream(&mut self) -> Option<&mut H2Response> {
        match &mut self.sink {
            Sink::Http2(r) => Some(r),
            Sink::Http1(_) => None,
        }
    }

    /// Every byte of the response is framed (a 500 the server made included).
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Complete
    }

    pub fn progress(&self) -> Progress {
        match self.phase {
            _ if self.broken => Progress::Broken,
            Phase::Complete => Progress::Done,
            _ => Progress::Running,
        }
    }

    /// The connection waits: wake it at the next news.
    pub fn arm(&mut self) {
        self.armed = true;
    }

    /// The socket took everything queued: a suspended `send()` continues.
    pub fn drained(&mut self, py: Python<'_>) {
        if let Some(f) = self.sender.take() {
            resolve(py, &f, py.None());
        }
    }

    /// The client is gone: `receive()` answers `http.disconnect`, `send()` is ignored.
    pub fn client_gone(&mut self, py: Python<'_>) {
        if !self.disconnected {
            if let Some(task) = &self.task {
                let _ = self.kit.cancel_after_grace.call1(py, (task.bind(py),));
            }
        }
        self.disconnected = true;
        self.detach(py);
        self.drained(py);
    }

    /// The connection is done with this cycle (response sent, or closed); it takes
    /// the response's framing state back. Later `receive()` calls answer
    /// `http.disconnect`.
    pub fn finish(&mut self, py: Python<'_>) -> Http1Response {
        self.detach(py);
        let facts = self.facts;
        match std::mem::replace(
            &mut self.sink,
            Sink::Http1(Http1Response::new(Outbox::default(), &facts)),
        ) {
            Sink::Http1(http) => http,
            Sink::Http2(_) => unreachable!("an HTTP/2 stream's cycle is driven by conn::h2_asgi"),
        }
    }

    /// The connection is done with this cycle: later `receive()` calls answer
    /// `http.disconnect` (an HTTP/2 stream's end; HTTP/1 uses `finish`).
    pub fn detach(&mut self, py: Python<'_>) {
        self.wake = None;
        self.armed = false;
        self.body = None;
        for f in std::mem::take(&mut self.receivers) {
            resolve(py, &f, disconnect_message(py));
        }
    }

    fn notify(&mut self, py: Python<'_>) {
        if self.armed {
            if let Some((wakeups, key)) = &self.wake {
                self.armed = false;
                wakeups.wake(py, *key);
            }
        }
    }

    /// The application's coroutine ended (`error`: what it raised). Uvicorn's rules:
    /// before the response started, a 500; after, a connection that closes.
    pub fn app_returned(&mut self, py: Python<'_>, error: Option<PyErr>) {
        let error = error.filter(|e| {
            // A client that left is no application error (nobody is there to see
            // the 500 either).
            !(self.disconnected
                && (e.is_instance(py, self.kit.disconnected_error.bind(py))
                    || e.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py)))
        });
        if let Some(e) = &error {
            tracing::error!(
                "Exception in ASGI application\n{}",
                crate::python::format_exception(py, e)
            );
        }
        match self.phase {
            Phase::Waiting | Phase::Started => {
                if error.is_none() && !self.disconnected {
                    tracing::error!("ASGI callable returned without starting response.");
                }
                if !self.disconnected {
                    self.answer_500();
                }
                self.phase = Phase::Complete;
                self.broken = true;
            }
            Phase::Streaming => {
                if error.is_none() {
                    tracing::error!("ASGI callable returned without completing response.");
                }
                self.broken = true;
            }
            Phase::Complete => {}
        }
        self.notify(py);
    }

    fn answer_500(&mut self) {
        let headers: [(&[u8], &[u8]); 2] = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"connection", b"close"),
        ];
        let facts = RequestFacts {
            close: true,
            known_length: Some(ERROR_BODY.len() as u64),
            ..self.facts
        };
        if self
            .sink
            .head("500 Internal Server Error", headers.into_iter(), facts)
            .is_ok()
        {
            self.sink.data(ERROR_BODY);
            self.sink.end();
        }
    }

    fn next_body_message<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (chunk, more) = match self.body.take() {
            None | Some(Body::Empty) => (Vec::new(), false),
            Some(Body::Memory(data)) => (data, false),
            Some(Body::File(mut file)) => {
                let mut chunk = Vec::with_capacity(RECEIVE_CHUNK_BYTES);
                (&mut file)
                    .take(RECEIVE_CHUNK_BYTES as u64)
                    .read_to_end(&mut chunk)
                    .map_err(|e| {
                        PyRuntimeError::new_err(format!("reading the request body: {e}"))
                    })?;
                let more = chunk.len() == RECEIVE_CHUNK_BYTES;
                if more {
                    self.body = Some(Body::File(file));
                }
                (chunk, more)
            }
        };
        let message = PyDict::new(py);
        message.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
        message.set_item(intern!(py, "body"), PyBytes::new(py, &chunk))?;
        message.set_item(intern!(py, "more_body"), more)?;
        Ok(message)
    }

    fn response_start(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        let status: u16 = required(message, intern!(py, "status"))?
            .extract()
            .map_err(|_| PyTypeError::new_err("http.response.start 'status' must be an int"))?;
        if !(100..=999).contains(&status) {
            return Err(PyValueError::new_err(format!(
                "invalid HTTP status code {status}"
            )));
        }
        let mut headers = Vec::new();
        if let Some(list) = message.get_item(intern!(py, "headers"))? {
            for pair in list.try_iter()? {
                let pair = pair?;
                headers.push(header_pair(&pair)?);
            }
        }
        if let Some(t) = message.get_item(intern!(py, "trailers"))? {
            if t.is_truthy()? {
                return Err(PyRuntimeError::new_err(
                    "rgun does not send HTTP trailers (the scope does not offer http.response.trailers)",
                ));
            }
        }
        self.start = Some((status, headers));
        self.phase = Phase::Started;
        Ok(())
    }

    /// Frames the stored head, with the body's length when it is already known.
    fn write_head(&mut self, known_length: Option<u64>) -> PyResult<()> {
        // Taken even if the head is refused below: a refused head stays refused.
        let Some((status, headers)) = self.start.take() else {
            return Err(PyRuntimeError::new_err(
                "the response head was refused; only an exception (a 500) can follow",
            ));
        };
        let line = StatusLine::new(status);
        let facts = RequestFacts {
            known_length,
            ..self.facts
        };
        self.sink
            .head(
                line.as_str(),
                headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                facts,
            )
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        self.sent_headers = headers;
        self.phase = Phase::Streaming;
        Ok(())
    }

    /// The response's headers as framed, as text (a `post_request` hook's `resp`).
    pub fn response_headers(&self) -> Vec<(String, String)> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.sent_headers
            .iter()
            .map(|(n, v)| (text(n), text(v)))
            .collect()
    }

    fn response_body(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let (body, more) = body_and_more(message, "http.response.body 'body' must be bytes")?;
        let body = body.as_ref().map_or(&b""[..], |b| b.as_bytes());
        if self.phase == Phase::Started {
            self.write_head((!more).then_some(body.len() as u64))?;
        }
        self.sink.data(body);
        if !more {
            self.sink.end();
            self.phase = Phase::Complete;
        }
        Ok(())
    }

    fn response_pathsend(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        let path: String = required(message, intern!(py, "path"))?.extract()?;
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        if self.phase == Phase::Started {
            self.write_head(Some(size))?;
        }
        self.sink.file(OwnedFd::from(file), 0);
        self.sink.end();
        self.phase = Phase::Complete;
        Ok(())
    }
}

#[pymethods]
impl Cycle {
    /// ASGI `receive()`.
    fn receive(&mut self, py: Python<'_>) -> PyResult<PyObject> {
        if self.body.is_some() {
            let message = self.next_body_message(py)?;
            return Ok(Py::new(py, Ready::new(message.into_any().unbind()))?.into_any());
        }
        if self.disconnected || self.wake.is_none() || self.phase == Phase::Complete {
            return Ok(Py::new(py, Ready::new(disconnect_message(py)))?.into_any());
        }
        let future = self.kit.create_future.call0(py)?;
        self.receivers.push(future.clone_ref(py));
        Ok(future)
    }

    /// ASGI `send(message)`.
    fn send(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        if self.disconnected {
            // ASGI 2.4: an OSError subclass (Starlette then stops streaming).
            return Err(PyErr::from_value(
                self.kit
                    .disconnected_error
                    .bind(py)
                    .call1(("the client disconnected",))?,
            ));
        }
        let message = message
            .downcast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("an ASGI message must be a dict"))?;
        let kind = required(message, intern!(py, "type"))?;
        let kind = kind
            .downcast::<PyString>()
            .map_err(|_| PyTypeError::new_err("an ASGI message's 'type' must be a str"))?
            .to_str()?;
        match (self.phase, kind) {
            (Phase::Waiting, "http.response.start") => self.response_start(message)?,
            (Phase::Started | Phase::Streaming, "http.response.body") => {
                self.response_body(message)?
            }
            (Phase::Started | Phase::Streaming, "http.response.pathsend") => {
                self.response_pathsend(message)?
            }
            (Phase::Waiting, _) => {
                return Err(PyRuntimeError::new_err(format!(
                    "Expected ASGI message 'http.response.start', but got '{kind}'."
                )))
            }
            (Phase::Complete, _) => {
                return Err(PyRuntimeError::new_err(format!(
                    "Unexpected ASGI message '{kind}' sent, after response already completed."
                )))
            }
            _ => {
                return Err(PyRuntimeError::new_err(format!(
                    "Expected ASGI message 'http.response.body', but got '{kind}'."
                )))
            }
        }
        if self.phase == Phase::Started {
            return Ok(self.kit.done.clone_ref(py).into_any());
        }
        if self.phase == Phase::Complete {
            for f in std::mem::take(&mut self.receivers) {
                resolve(py, &f, disconnect_message(py));
            }
        }
        self.notify(py);
        if self.phase != Phase::Complete && self.sink.buffered() >= SEND_HIGH_WATER_BYTES {
            let future = self.kit.create_future.call0(py)?;
            self.sender = Some(future.clone_ref(py));
            return Ok(future);
        }
        Ok(self.kit.done.clone_ref(py).into_any())
    }

    /// The done callback of the application's task.
    pub fn task_done(&mut self, py: Python<'_>, task: &Bound<'_, PyAny>) {
        self.task = None;
        self.app_returned(py, task_error(py, task));
    }
}

/// What a finished asyncio task of the application raised, if anything (a cancelled
/// task's `exception()` raises CancelledError, which counts as raised).
pub(super) fn task_error(py: Python<'_>, task: &Bound<'_, PyAny>) -> Option<PyErr> {
    match task.call_method0(intern!(py, "exception")) {
        Ok(e) if e.is_none() => None,
        Ok(e) => Some(PyErr::from_value(e)),
        Err(e) => Some(e),
    }
}

/// An awaitable that is already complete with `value`: awaiting it never suspends.
#[pyclass(module = "rgun")]
pub struct Ready {
    value: Option<PyObject>,
}

impl Ready {
    pub(crate) fn new(value: PyObject) -> Ready {
        Ready { value: Some(value) }
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> PyResult<Option<PyObject>> {
        match self.value.take() {
            Some(v) => Err(PyStopIteration::new_err((v,))),
            None => Ok(None),
        }
    }
}

/// `future.set_result(value)` unless it is already done (cancelled).
pub(crate) fn resolve(py: Python<'_>, future: &Py<PyAny>, value: PyObject) {
    let future = future.bind(py);
    let pending = future
        .call_method0(intern!(py, "done"))
        .and_then(|d| d.is_truthy())
        .map(|done| !done)
        .unwrap_or(false);
    if pending {
        if let Err(e) = future.call_method1(intern!(py, "set_result"), (value,)) {
            tracing::debug!("cannot resolve an ASGI future: {e}");
        }
    }
}
