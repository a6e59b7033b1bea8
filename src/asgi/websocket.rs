//! `WsCycle`: one WebSocket connection as the application sees it (ASGI `websocket`
//! scope): `receive()` gives `websocket.connect`, then the client's messages, then
//! `websocket.disconnect`; `send()` takes `websocket.accept` (the 101 handshake),
//! `websocket.send` and `websocket.close` (a 403 before the handshake). Frames are
//! written into the cycle's `Outbox`; the connection (`worker::conn::asgi`) sends them,
//! feeds it the client's decoded messages, and answers pings and closes itself.
//! `send()` suspends past `SEND_HIGH_WATER_BYTES` waiting, as for HTTP.

use std::collections::VecDeque;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::cycle::{task_error, Kit, Ready, SEND_HIGH_WATER_BYTES};
use super::message::body_and_more;
use super::wake::Wakeups;
use crate::http::framer::{Http1Response, ResponseSink};
use crate::http::response::RequestFacts;
use crate::http::websocket::{
    accept_key, encode_close, encode_compressed, encode_frame, Message, Opcode,
};
use crate::http::ws_deflate::negotiate;
use crate::net::outbox::Outbox;

/// Client messages held for an application that is not receiving, at most; the
/// connection stops reading beyond it.
pub const MAX_QUEUED_MESSAGES: usize = 64;
/// Smaller messages go out uncompressed even with permessage-deflate (the deflate
/// block's overhead would make them larger).
const COMPRESS_MIN_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `websocket.accept`.
    Connecting,
    Open,
    /// Our close frame (or the 403) is queued: nothing more goes out.
    Closed,
}

#[pyclass(unsendable, module = "rgun")]
pub struct WsCycle {
    outbox: Outbox,
    phase: Phase,
    key: Vec<u8>,
    /// The client's `Sec-WebSocket-Extensions` offers.
    extensions: Vec<Vec<u8>>,
    /// permessage-deflate was agreed in the handshake.
    deflate: bool,
    facts: RequestFacts,
    /// `websocket.connect` was handed out.
    connected: bool,
    incoming: VecDeque<PyObject>,
    receivers: VecDeque<Py<PyAny>>,
    sender: Option<Py<PyAny>>,
    /// The client's close code once it left (or the connection failed).
    gone: Option<u16>,
    /// The status of the answer to the handshake (101, 403, 500), for the access log.
    pub status: u16,
    wake: Option<(Arc<Wakeups>, usize)>,
    armed: bool,
    kit: Kit,
    task: Option<Py<PyAny>>,
    /// A denial response under way (`websocket.http.response.start` came; the head
    /// waits for the first body message).
    denial: Option<Denial>,
}

/// A denial response: its status and headers, then its framing once the first body
/// message came.
struct Denial {
    status: u16,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    http: Option<Http1Response>,
}

impl WsCycle {
    pub fn new(
        py: Python<'_>,
        outbox: Outbox,
        facts: RequestFacts,
        key: Vec<u8>,
        extensions: Vec<Vec<u8>>,
        wake: (Arc<Wakeups>, usize),
        kit: &Kit,
    ) -> WsCycle {
        WsCycle {
            outbox,
            phase: Phase::Connecting,
            key,
            extensions,
            deflate: false,
            facts,
            connected: false,
            incoming: VecDeque::new(),
            receivers: VecDeque::new(),
            sender: None,
            gone: None,
            status: 0,
            wake: Some(wake),
            armed: false,
            kit: kit.clone_ref(py),
            task: None,
            denial: None,
        }
    }

    pub fn set_task(&mut self, task: Py<PyAny>) {
        self.task = Some(task);
    }

    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// The handshake was accepted: the connection now speaks frames.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// permessage-deflate was agreed: the client's RSV1 frames are compressed.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// Nothing more will be sent: close once the outbox is empty.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The connection may read more client messages.
    pub fn wants_input(&self) -> bool {
        self.incoming.len() < MAX_QUEUED_MESSAGES
    }

    pub fn arm(&mut self) {
        self.armed = true;
    }

    fn notify(&mut self, py: Python<'_>) {
        if self.armed {
            if let Some((wakeups, key)) = &self.wake {
                self.armed = false;
                wakeups.wake(py, *key);
            }
        }
    }

    /// The socket took everything queued: a suspended `send()` continues.
    pub fn drained(&mut self, py: Python<'_>) {
        if let Some(f) = self.sender.take() {
            resolve(py, &f, py.None());
        }
    }

    /// A message or control frame from the client. Pings are answered here.
    pub fn from_client(&mut self, py: Python<'_>, message: Message) -> PyResult<()> {
        let event = PyDict::new(py);
        event.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
        match message {
            Message::Text(text) => event.set_item(intern!(py, "text"), text)?,
            Message::Binary(data) => {
                event.set_item(intern!(py, "bytes"), PyBytes::new(py, &data))?
            }
            Message::Ping(payload) => {
                if self.phase == Phase::Open {
                    encode_frame(&mut self.outbox.buf, Opcode::Pong, &payload);
                }
                return Ok(());
            }
            Message::Pong(_) => return Ok(()),
            Message::Close(code) => {
                let code = code.map_or(1005, |(c, _)| c);
                if self.phase == Phase::Open {
                    // Echo the client's code (RFC 6455 5.5.1).
                    encode_close(
                        &mut self.outbox.buf,
                        if code == 1005 { 1000 } else { code },
                        "",
                    );
                    self.phase = Phase::Closed;
                }
                self.client_gone(py, code);
                return Ok(());
            }
        }
        self.deliver(py, event.into_any().unbind());
        Ok(())
    }

    /// The connection failed with `code` (sent to the client if it can still hear).
    pub fn fail(&mut self, py: Python<'_>, code: u16, reason: &str) {
        if self.phase == Phase::Open {
            encode_close(&mut self.outbox.buf, code, reason);
            self.phase = Phase::Closed;
        }
        self.client_gone(py, code);
    }

    /// The client is gone (`code`: its close code, 1006 without one).
    pub fn client_gone(&mut self, py: Python<'_>, code: u16) {
        if self.gone.is_some() {
            return;
        }
        self.gone = Some(code);
        if let Some(task) = &self.task {
            let _ = self.kit.cancel_after_grace.call1(py, (task.bind(py),));
        }
        while let Some(f) = self.receivers.pop_front() {
            resolve(py, &f, disconnect_event(py, code));
        }
        self.drained(py);
    }

    /// The connection is done with this cycle.
    pub fn detach(&mut self, py: Python<'_>) {
        self.client_gone(py, 1006);
        self.wake = None;
        self.armed = false;
    }

    fn deliver(&mut self, py: Python<'_>, event: PyObject) {
        match self.receivers.pop_front() {
            Some(f) => resolve(py, &f, event),
            None => self.incoming.push_back(event),
        }
    }

    /// The application's coroutine ended (`error`: what it raised).
    pub fn app_returned(&mut self, py: Python<'_>, error: Option<PyErr>) {
        let error = error.filter(|e| {
            !(self.gone.is_some()
                && (e.is_instance(py, self.kit.disconnected_error.bind(py))
                    || e.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py)))
        });
        if let Some(e) = &error {
            if let Some(tb) = e.traceback(py) {
                let _ = e.value(py).setattr(intern!(py, "__traceback__"), tb);
            }
            tracing::error!(
                "Exception in ASGI application\n{}",
                crate::python::format_exception(py, e)
            );
        }
        match self.phase {
            Phase::Connecting => {
                if error.is_none() {
                    tracing::error!("ASGI callable returned without sending handshake.");
                }
                let status = if error.is_some() { 500 } else { 403 };
                self.refuse(status);
            }
            Phase::Open => {
                encode_close(
                    &mut self.outbox.buf,
                    if error.is_some() { 1011 } else { 1000 },
                    "",
                );
                self.phase = Phase::Closed;
            }
            Phase::Closed => {}
        }
        self.notify(py);
    }

    /// An HTTP answer instead of the handshake, then the connection closes.
    fn refuse(&mut self, status: u16) {
        let facts = RequestFacts {
            close: true,
            known_length: Some(0),
            ..self.facts
        };
        let mut http = Http1Response::new(std::mem::take(&mut self.outbox), &facts);
        let line = crate::http::response::StatusLine::new(status);
        let _ = http.head(line.as_str(), std::iter::empty(), facts);
        http.end();
        self.outbox = http.outbox;
        self.status = status;
        self.phase = Phase::Closed;
    }

    fn accept(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(&self.key)
        )
        .into_bytes();
        if let Some(p) = message.get_item(intern!(py, "subprotocol"))? {
            if !p.is_none() {
                let p: String = p.extract()?;
                if p.bytes().any(|b| b < 0x21 || b == 0x7f) {
                    return Err(PyValueError::new_err("invalid subprotocol"));
                }
                head.extend_from_slice(b"Sec-WebSocket-Protocol: ");
                head.extend_from_slice(p.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
        }
        if let Some(answer) = negotiate(self.extensions.iter().map(Vec::as_slice)) {
            head.extend_from_slice(b"Sec-WebSocket-Extensions: ");
            head.extend_from_slice(answer.as_bytes());
            head.extend_from_slice(b"\r\n");
            self.deflate = true;
        }
        if let Some(headers) = message.get_item(intern!(py, "headers"))? {
            for pair in headers.try_iter()? {
                let pair = pair?;
                let name = pair.get_item(0)?;
                let value = pair.get_item(1)?;
                let name = name
                    .downcast::<PyBytes>()
                    .map_err(|_| PyTypeError::new_err("header names must be bytes"))?
                    .as_bytes();
                let value = value
                    .downcast::<PyBytes>()
                    .map_err(|_| PyTypeError::new_err("header values must be bytes"))?
                    .as_bytes();
                if name.is_empty()
                    || !name.iter().all(|b| crate::http::head::is_token_byte(*b))
                    || value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
                {
                    return Err(PyValueError::new_err("invalid header in websocket.accept"));
                }
                head.extend_from_slice(name);
                head.extend_from_slice(b": ");
                head.extend_from_slice(value);
                head.extend_from_slice(b"\r\n");
            }
        }
        head.extend_from_slice(b"\r\n");
        self.outbox.buf.extend_from_slice(&head);
        self.status = 101;
        self.phase = Phase::Open;
        Ok(())
    }

    /// `websocket.http.response.start` (the denial response extension).
    fn denial_start(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        let status: u16 = message
            .get_item(intern!(py, "status"))?
            .ok_or_else(|| PyTypeError::new_err("the message has no 'status'"))?
            .extract()?;
        if !(100..=999).contains(&status) {
            return Err(PyValueError::new_err(format!(
                "invalid HTTP status code {status}"
            )));
        }
        let mut headers = Vec::new();
        if let Some(list) = message.get_item(intern!(py, "headers"))? {
            for pair in list.try_iter()? {
                let pair = pair?;
                let bytes = |i: usize| -> PyResult<Vec<u8>> {
                    Ok(pair
                        .get_item(i)?
                        .downcast::<PyBytes>()
                        .map_err(|_| PyTypeError::new_err("header names and values must be bytes"))?
                        .as_bytes()
                        .to_vec())
                };
                headers.push((bytes(0)?, bytes(1)?));
            }
        }
        self.denial = Some(Denial {
            status,
            headers,
            http: None,
        });
        Ok(())
    }

    /// `websocket.http.response.body`: framed as an HTTP response; the connection
    /// closes after it.
    fn denial_body(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let Some(Denial {
            status,
            headers,
            http,
        }) = self.denial.as_mut()
        else {
            return Err(PyRuntimeError::new_err(
                "websocket.http.response.body before websocket.http.response.start",
            ));
        };
        let (body, more) = body_and_more(message, "'body' must be bytes")?;
        let body = body.as_ref().map_or(&b""[..], |b| b.as_bytes());
        let http = match http {
            Some(http) => http,
            None => {
                let facts = RequestFacts {
                    known_length: (!more).then_some(body.len() as u64),
                    ..self.facts
                };
                let mut response = Http1Response::new(std::mem::take(&mut self.outbox), &facts);
                let line = crate::http::response::StatusLine::new(*status);
                response
                    .head(
                        line.as_str(),
                        headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                        facts,
                    )
                    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
                self.status = *status;
                http.insert(response)
            }
        };
        http.data(body);
        if !more {
            http.end();
            let denial = self.denial.take().expect("present");
            self.outbox = denial.http.expect("framed").outbox;
            self.phase = Phase::Closed;
        }
        Ok(())
    }

    fn send_message(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        if let Some(b) = message
            .get_item(intern!(py, "bytes"))?
            .filter(|b| !b.is_none())
        {
            let b = b
                .downcast::<PyBytes>()
                .map_err(|_| PyTypeError::new_err("websocket.send 'bytes' must be bytes"))?;
            self.frame(Opcode::Binary, b.as_bytes());
        } else if let Some(t) = message
            .get_item(intern!(py, "text"))?
            .filter(|t| !t.is_none())
        {
            let t = t
                .downcast::<PyString>()
                .map_err(|_| PyTypeError::new_err("websocket.send 'text' must be str"))?;
            self.frame(Opcode::Text, t.to_str()?.as_bytes());
        } else {
            return Err(PyValueError::new_err(
                "websocket.send needs 'bytes' or 'text'",
            ));
        }
        Ok(())
    }

    /// A data message, compressed when agreed and worth it.
    fn frame(&mut self, opcode: Opcode, payload: &[u8]) {
        if self.deflate && payload.len() >= COMPRESS_MIN_BYTES {
            encode_compressed(&mut self.outbox.buf, opcode, payload);
        } else {
            encode_frame(&mut self.outbox.buf, opcode, payload);
        }
    }

    fn close(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        let code: u16 = match message.get_item(intern!(py, "code"))? {
            Some(c) if !c.is_none() => c.extract()?,
            _ => 1000,
        };
        let reason: String = match message.get_item(intern!(py, "reason"))? {
            Some(r) if !r.is_none() => r.extract()?,
            _ => String::new(),
        };
        encode_close(&mut self.outbox.buf, code, &reason);
        self.phase = Phase::Closed;
        Ok(())
    }
}

#[pymethods]
impl WsCycle {
    fn receive(&mut self, py: Python<'_>) -> PyResult<PyObject> {
        let event = if !self.connected {
            self.connected = true;
            let event = PyDict::new(py);
            event.set_item(intern!(py, "type"), intern!(py, "websocket.connect"))?;
            Some(event.into_any().unbind())
        } else if let Some(event) = self.incoming.pop_front() {
            // Room again for a connection that stopped reading.
            if self.incoming.len() + 1 == MAX_QUEUED_MESSAGES {
                self.notify(py);
            }
            Some(event)
        } else {
            self.gone.map(|code| disconnect_event(py, code))
        };
        if let Some(event) = event {
            return Ok(Py::new(py, Ready::new(event))?.into_any());
        }
        let future = self.kit.create_future.call0(py)?;
        self.receivers.push_back(future.clone_ref(py));
        Ok(future)
    }

    fn send(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let message = message
            .downcast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("an ASGI message must be a dict"))?;
        let kind = message
            .get_item(intern!(py, "type"))?
            .ok_or_else(|| PyTypeError::new_err("the ASGI message has no 'type' key"))?;
        let kind = kind.downcast::<PyString>()?.to_str()?;
        if self.gone.is_some() || self.phase == Phase::Closed {
            return Err(PyErr::from_value(
                self.kit
                    .disconnected_error
                    .bind(py)
                    .call1(("the WebSocket is closed",))?,
            ));
        }
        match (self.phase, kind) {
            (Phase::Connecting, "websocket.accept") => self.accept(message)?,
            (Phase::Connecting, "websocket.close") if self.denial.is_none() => self.refuse(403),
            (Phase::Connecting, "websocket.http.response.start") if self.denial.is_none() => {
                self.denial_start(message)?
            }
            (Phase::Connecting, "websocket.http.response.body") => self.denial_body(message)?,
            (Phase::Open, "websocket.send") => self.send_message(message)?,
            (Phase::Open, "websocket.close") => self.close(message)?,
            (Phase::Connecting, _) => {
                return Err(PyRuntimeError::new_err(format!(
                "Expected ASGI message 'websocket.accept' or 'websocket.close', but got '{kind}'."
            )))
            }
            _ => {
                return Err(PyRuntimeError::new_err(format!(
                    "Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'."
                )))
            }
        }
        self.notify(py);
        if self.phase == Phase::Open && self.outbox.buffered() >= SEND_HIGH_WATER_BYTES {
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

fn disconnect_event(py: Python<'_>, code: u16) -> PyObject {
    let event = PyDict::new(py);
    let _ = event.set_item(intern!(py, "type"), intern!(py, "websocket.disconnect"));
    let _ = event.set_item(intern!(py, "code"), code);
    event.into_any().unbind()
}

fn resolve(py: Python<'_>, future: &Py<PyAny>, value: PyObject) {
    super::cycle::resolve(py, future, value);
}
